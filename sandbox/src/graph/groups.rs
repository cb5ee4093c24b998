//! `/groups`: reads and membership `$ref` add/remove, with Graph's refusals for groups it can't
//! change (distribution lists and mail-enabled security groups belong to Exchange, dynamic
//! groups to their rule, synced groups to on-prem AD).

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::error::{GraphError, GraphResult};
use super::odata::Query;
use super::{
    GROUP_READABLE, GROUPS, USER_DEFAULT, USERS, authenticate, collection, company, company_mut,
    entity, group_json, json_response, no_content, ref_target, user_json,
};
use crate::http::{AppState, Ctx, parse_json};
use crate::world::{Group, GroupKind, Tenant};

fn find<'a>(t: &'a Tenant, id: &str) -> Option<&'a Group> {
    t.groups.iter().find(|g| g.id.eq_ignore_ascii_case(id))
}

pub(super) async fn list(
    State(shared): State<AppState>,
    ctx: Ctx,
    RawQuery(q): RawQuery,
) -> GraphResult<Response> {
    let (st, now) = shared.lock();
    let caller = authenticate(&st, &ctx, now)?;
    let query = Query::parse_advanced(q.as_deref(), &GROUPS, ctx.eventual())?;
    let c = company(&st, &caller)?;
    let groups = c.tenant.groups.iter().map(group_json);
    Ok(collection(
        &ctx,
        &query,
        groups,
        GROUP_READABLE,
        "groups",
        100,
    ))
}

pub(super) async fn get_one(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
    RawQuery(q): RawQuery,
) -> GraphResult<Response> {
    let (st, now) = shared.lock();
    let caller = authenticate(&st, &ctx, now)?;
    let query = Query::parse(q.as_deref(), &GROUPS)?;
    let c = company(&st, &caller)?;
    let g = find(&c.tenant, &id).ok_or_else(|| GraphError::not_found(&id))?;
    let obj = entity(&ctx, "groups", &query, &group_json(g), GROUP_READABLE);
    Ok(json_response(StatusCode::OK, obj))
}

pub(super) async fn members(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
    RawQuery(q): RawQuery,
) -> GraphResult<Response> {
    let (st, now) = shared.lock();
    let caller = authenticate(&st, &ctx, now)?;
    let query = Query::parse(q.as_deref(), &USERS)?;
    let c = company(&st, &caller)?;
    let g = find(&c.tenant, &id).ok_or_else(|| GraphError::not_found(&id))?;
    let users = g
        .members
        .iter()
        .filter_map(|m| c.tenant.users.iter().find(|u| &u.id == m))
        .map(|u| user_json(u, &c.tenant));
    Ok(collection(
        &ctx,
        &query,
        users,
        USER_DEFAULT,
        "directoryObjects",
        100,
    ))
}

/// `GET /groups/{id}/members/$ref`: the members as references (`@odata.id` each), paged like
/// any collection.
pub(super) async fn member_refs(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
    RawQuery(q): RawQuery,
) -> GraphResult<Response> {
    let (st, now) = shared.lock();
    let caller = authenticate(&st, &ctx, now)?;
    let query = Query::parse(q.as_deref(), &USERS)?;
    if query.select.is_some() || query.filter.is_some() {
        return Err(GraphError::odata(
            "Query option '$select' or '$filter' is not allowed on a collection of references.",
        ));
    }
    let c = company(&st, &caller)?;
    let g = find(&c.tenant, &id).ok_or_else(|| GraphError::not_found(&id))?;
    let refs: Vec<serde_json::Value> = g
        .members
        .iter()
        .filter(|m| c.tenant.users.iter().any(|u| &u.id == *m))
        .map(|m| json!({"@odata.id": super::directory_ref(&ctx.origin, &c.tenant.id, m, "User")}))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        query.page(refs, &ctx.origin, &ctx.path, "Collection($ref)", 100),
    ))
}

fn check_writable(g: &Group) -> GraphResult<()> {
    if g.on_prem.is_some() {
        return Err(GraphError::synced_object());
    }
    match g.kind {
        GroupKind::Distribution | GroupKind::MailSecurity => Err(GraphError::bad_request(
            "Cannot Update a mail-enabled security groups and or distribution list.",
        )),
        GroupKind::DynamicSecurity => Err(GraphError::bad_request(
            "Insufficient privileges to complete the operation. Members of a group with dynamic membership are computed by its membership rule and cannot be added or removed.",
        )),
        GroupKind::Security | GroupKind::M365 => Ok(()),
    }
}

pub(super) async fn add_member(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
    body: Bytes,
) -> GraphResult<Response> {
    let (mut guard, now) = shared.lock();
    let st = &mut *guard;
    let caller = authenticate(st, &ctx, now)?;
    let body = parse_json(&body).map_err(|_| GraphError::invalid_json())?;
    let member = ref_target(&body)?;
    let c = company_mut(st, &caller)?;
    if !c.tenant.users.iter().any(|u| u.id == member) {
        return Err(GraphError::not_found(&member));
    }
    let g = c
        .tenant
        .groups
        .iter_mut()
        .find(|g| g.id.eq_ignore_ascii_case(&id))
        .ok_or_else(|| GraphError::not_found(&id))?;
    check_writable(g)?;
    if g.members.contains(&member) {
        return Err(GraphError::bad_request(
            "One or more added object references already exist for the following modified properties: 'members'.",
        ));
    }
    g.members.push(member.clone());
    let gid = g.id.clone();
    st.ledger.record(
        ctx.mutation(
            "graph",
            &caller.company,
            "group.add_member",
            Some(&gid),
            json!({"member": member}),
        ),
        now,
    );
    Ok(no_content())
}

pub(super) async fn remove_member(
    State(shared): State<AppState>,
    Path((id, member)): Path<(String, String)>,
    ctx: Ctx,
) -> GraphResult<Response> {
    let (mut guard, now) = shared.lock();
    let st = &mut *guard;
    let caller = authenticate(st, &ctx, now)?;
    let c = company_mut(st, &caller)?;
    let g = c
        .tenant
        .groups
        .iter_mut()
        .find(|g| g.id.eq_ignore_ascii_case(&id))
        .ok_or_else(|| GraphError::not_found(&id))?;
    check_writable(g)?;
    let member = member.to_ascii_lowercase();
    let Some(pos) = g.members.iter().position(|m| *m == member) else {
        return Err(GraphError::not_found(&member));
    };
    g.members.remove(pos);
    let gid = g.id.clone();
    st.ledger.record(
        ctx.mutation(
            "graph",
            &caller.company,
            "group.remove_member",
            Some(&gid),
            json!({"member": member}),
        ),
        now,
    );
    Ok(no_content())
}
