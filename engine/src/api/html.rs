//! The page a signed link opens: plain HTML, every value escaped (ticket fields are untrusted).

use std::fmt::Write as _;

use super::approvals::{DecisionKind, LinkView};

/// Escapes text for HTML.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page for a link: the plan the gate unlocks and a button that records the decision. The
/// form has no `action`: it posts back to the page's own address, whatever prefix a proxy in
/// front of the API (`public_url`) adds.
pub(crate) fn link_page(view: &LinkView) -> String {
    let g = &view.gate;
    let verb = match view.decision {
        DecisionKind::Approve => "Approve",
        DecisionKind::Reject => "Reject",
    };
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"robots\" content=\"noindex\">\
         <title>{verb}: {wf} for {co}</title></head><body style=\"font-family:sans-serif;max-width:48em;margin:2em auto\">",
        wf = escape(&g.workflow),
        co = escape(&g.company_name),
    );
    let _ = write!(
        h,
        "<h1>{verb} <code>{}</code> for {}</h1>",
        escape(&g.workflow),
        escape(&g.company_name)
    );
    if !g.message.is_empty() {
        let _ = write!(h, "<p>{}</p>", escape(&g.message));
    }
    let _ = write!(
        h,
        "<p>Requested by {} · approvers {} · {} of {} approvals",
        escape(&g.requested_by),
        escape(&g.approvers.join(", ")),
        g.approvals.len(),
        g.quorum
    );
    if let Some(exp) = g.expires_at {
        let _ = write!(h, " · expires {}", escape(&exp.to_string()));
    }
    h.push_str("</p>");
    if g.to_admins.is_some() || !g.unavailable.is_empty() {
        let missing: Vec<String> = g
            .unavailable
            .iter()
            .map(|u| format!("{} {}", u.email, u.reason.words()))
            .collect();
        let _ = write!(
            h,
            "<p>{}{}</p>",
            match g.to_admins {
                Some(steward_schemas::AdminFallback::Approvers) =>
                    "This gate came to the admins: nobody it names can decide. ",
                Some(steward_schemas::AdminFallback::Escalation) =>
                    "If nobody decides in time, this gate goes to the admins. ",
                None => "",
            },
            escape(&if missing.is_empty() {
                String::new()
            } else {
                format!("Left out: {}.", missing.join(", "))
            })
        );
    }
    if let Some(t) = &g.ticket {
        let _ = write!(
            h,
            "<p>Ticket {} #{}: {}</p>",
            escape(&t.psa),
            escape(&t.id),
            escape(&t.title)
        );
    }
    if !g.custom_instructions.is_empty() {
        let _ = write!(
            h,
            "<h2>Company instructions</h2><p>{}</p>",
            escape(&g.custom_instructions)
        );
    }
    h.push_str("<h2>What it unlocks</h2><table border=\"1\" cellpadding=\"4\"><tr><th>step</th><th>does</th><th>on</th><th>parameters</th></tr>");
    for u in &g.unlocks {
        let _ = write!(
            h,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            escape(u.step.as_str()),
            escape(&u.summary),
            escape(&u.route),
            escape(&u.params.to_string())
        );
    }
    h.push_str("</table>");
    if view.recorded {
        let _ = write!(
            h,
            "<p><strong>Recorded: {} by {}.</strong> The gate is now {}.</p>",
            verb.to_lowercase(),
            escape(&view.approver),
            escape(&g.state)
        );
    } else {
        let _ = write!(
            h,
            "<form method=\"post\"><p>You are deciding as {}.</p><button type=\"submit\">{verb}</button></form>",
            escape(&view.approver)
        );
    }
    h.push_str("</body></html>");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_values_is_escaped() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}
