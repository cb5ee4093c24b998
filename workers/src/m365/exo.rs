//! The Exchange Online client: cmdlets through the admin API's `InvokeCommand`
//! (`POST {base}/adminapi/beta/{tenant}/InvokeCommand` with
//! `{"CmdletInput":{"CmdletName":…,"Parameters":{…}}}`), the endpoint the
//! ExchangeOnlineManagement module and CIPP use (domain notes §4.2), with the Graph client's
//! token, gate and classification machinery.
//!
//! Errors: the exception type of a cmdlet error is read from `error.details[0].message`
//! (`ExNNNNNN|<type>|<text>`), else from `error.innererror.internalexception.type`; the HTTP
//! status is not relied on to tell them apart (real Exchange answers a missing object 404
//! `NotFound` "Error executing cmdlet", with the type only in the details; the sandbox answers
//! 400 `BadRequest` with the type in the message too). The exception's short name becomes the
//! error's code.
//!
//! Only `Get-*` cmdlets are repeated after an answer we did not get; a `Set-`/`Add-`/`Remove-`
//! may have been applied, so its caller's next attempt checks first.

use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::m365::call::Call;
use crate::m365::error::{Error, Service, ServiceError, classify_exchange};
use crate::m365::token::Resource;
use crate::m365::transport::{Outgoing, Raw, Transport};

/// A cmdlet's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct CmdletAnswer {
    /// The objects it returned (all pages).
    pub value: Vec<Value>,
    /// `@adminapi.warnings` (a repeat that changed nothing says so here).
    pub warnings: Vec<String>,
}

/// The Exchange Online client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ExoClient {
    base: url::Url,
    transport: Transport,
}

/// The exception type in an Exchange error body.
fn exception_of(error: &Value) -> Option<String> {
    let from_details = error
        .get("details")
        .and_then(Value::as_array)
        .and_then(|d| d.first())
        .and_then(|d| d.get("message"))
        .and_then(Value::as_str)
        .and_then(|m| m.split('|').nth(1))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.contains('.'));
    let inner = || {
        let ie = error
            .get("innererror")
            .or_else(|| error.get("innerError"))?;
        ie.get("internalexception")
            .or_else(|| ie.get("internalException"))
            .and_then(|x| x.get("type"))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|t| !t.is_empty())
    };
    from_details.or_else(inner).map(str::to_owned)
}

fn parse_error(service: Service, request: &str, raw: &Raw) -> ServiceError {
    let body = raw.json();
    let error = body.as_ref().and_then(|b| b.get("error"));
    let code = error
        .and_then(|e| e.get("code"))
        .and_then(Value::as_str)
        .map_or_else(|| format!("HTTP{}", raw.status), str::to_owned);
    let exception = error.and_then(exception_of);
    // The readable text: the details' third part, else the message.
    let message = error
        .and_then(|e| e.get("details"))
        .and_then(Value::as_array)
        .and_then(|d| d.first())
        .and_then(|d| d.get("message"))
        .and_then(Value::as_str)
        .and_then(|m| m.splitn(3, '|').nth(2))
        .or_else(|| error.and_then(|e| e.get("message")).and_then(Value::as_str))
        .unwrap_or("(no message)")
        .to_owned();
    ServiceError {
        service,
        request: request.to_owned(),
        status: raw.status,
        code,
        inner_code: None,
        exception,
        message,
        retry_after: raw.retry_after,
        request_id: raw.request_id.clone(),
        client_request_id: Some(raw.client_request_id.clone()),
        class: classify_exchange(raw.status),
    }
}

impl ExoClient {
    pub(crate) fn new(base: url::Url, transport: Transport) -> Self {
        Self { base, transport }
    }

    /// Runs `cmdlet` with `parameters` in the call's tenant.
    pub async fn invoke(
        &self,
        call: &Call,
        cmdlet: &str,
        parameters: Map<String, Value>,
    ) -> Result<CmdletAnswer, Error> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| Error::Decode {
                service: Service::Exchange,
                request: cmdlet.to_owned(),
                reason: "the Exchange base URL cannot take a path".to_owned(),
            })?
            .pop_if_empty()
            .extend(["adminapi", "beta", call.tenant(), "InvokeCommand"]);
        let body = json!({"CmdletInput": {"CmdletName": cmdlet, "Parameters": parameters}});
        let label = format!("POST {} {cmdlet}", url.path());
        let idempotent = cmdlet.to_ascii_lowercase().starts_with("get-");
        let headers = [
            (
                "X-AnchorMailbox",
                format!(
                    "APP:SystemMailbox{{bb558c35-97f1-4cb9-8ff7-d53741dc928c}}@{}",
                    call.tenant()
                ),
            ),
            ("Prefer", "odata.maxpagesize=1000".to_owned()),
        ];
        let mut out = CmdletAnswer {
            value: Vec::new(),
            warnings: Vec::new(),
        };
        let mut next = Some(url);
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            let raw = self
                .transport
                .send(
                    call,
                    Outgoing {
                        service: Service::Exchange,
                        resource: Resource::Outlook,
                        method: Method::POST,
                        url,
                        label: label.clone(),
                        body: Some(&body),
                        idempotent,
                        headers: &headers,
                    },
                    parse_error,
                )
                .await?;
            let page = raw.json().ok_or_else(|| Error::Decode {
                service: Service::Exchange,
                request: label.clone(),
                reason: "the body is not JSON".to_owned(),
            })?;
            if let Some(v) = page.get("value").and_then(Value::as_array) {
                out.value.extend(v.iter().cloned());
            }
            if let Some(w) = page.get("@adminapi.warnings").and_then(Value::as_array) {
                out.warnings
                    .extend(w.iter().filter_map(Value::as_str).map(str::to_owned));
            }
            if let Some(link) = page.get("@odata.nextLink").and_then(Value::as_str)
                && pages < 1000
            {
                let link = url::Url::parse(link).map_err(|e| Error::Decode {
                    service: Service::Exchange,
                    request: label.clone(),
                    reason: format!("`@odata.nextLink` is not a URL: {e}"),
                })?;
                if link.origin() != self.base.origin() {
                    return Err(Error::Decode {
                        service: Service::Exchange,
                        request: label,
                        reason: "`@odata.nextLink` points to another host; not following it with the tenant's token".to_owned(),
                    });
                }
                next = Some(link);
            }
        }
        Ok(out)
    }
}

/// Builds cmdlet parameters: `params!{"Identity" => upn, "Confirm" => false}`.
#[macro_export]
macro_rules! params {
    ($($k:expr => $v:expr),* $(,)?) => {{
        let mut m = serde_json::Map::new();
        $( m.insert(($k).to_string(), serde_json::json!($v)); )*
        m
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exception_type_comes_from_the_details_or_the_inner_error() {
        let real = json!({"code": "NotFound", "message": "Error executing cmdlet",
            "details": [{"code": "Context", "target": "", "message": "Ex6F9304|Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException|The operation couldn't be performed because object 'x' couldn't be found."}]});
        assert_eq!(
            exception_of(&real).as_deref(),
            Some("Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException")
        );
        let inner = json!({"code": "BadRequest", "message": "Invalid Operation",
            "innererror": {"internalexception": {"type": "System.Management.Automation.AmbiguousParameterSetException"}}});
        assert_eq!(
            exception_of(&inner).as_deref(),
            Some("System.Management.Automation.AmbiguousParameterSetException")
        );
        assert_eq!(
            exception_of(&json!({"code": "x", "message": "|nope"})),
            None
        );
        let raw = Raw {
            status: 404,
            retry_after: None,
            request_id: None,
            client_request_id: "c".into(),
            location: None,
            body: json!({"error": real}).to_string().into_bytes(),
        };
        let e = parse_error(Service::Exchange, "POST x Set-Mailbox", &raw);
        assert!(e.is_not_found());
        assert_eq!(e.recorded_code(), "ManagementObjectNotFoundException");
        assert!(
            e.message.starts_with("The operation couldn't"),
            "{}",
            e.message
        );
    }
}
