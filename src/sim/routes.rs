//! Graph endpoints: which operation a method+path names, which WABA it touches, which bucket it counts
//! against (Meta's BUC table), and what it answers. Never checks tokens, counts calls or shapes HTTP.

use http::Method;
use rand::Rng;
use serde_json::{json, Value};

use super::data::{parse_fields, AssignedUser, Data, Kind, Template};
use super::error::GraphError;
use super::limits::Scope;
use super::paging;

/// Request parameters: query first, then body; a later value wins, as a body field overrides the query.
#[derive(Debug, Default, Clone)]
pub(crate) struct Params(pub Vec<(String, String)>);

impl Params {
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    WabaGet,
    TemplatesList,
    TemplatesCreate,
    TemplatesDelete,
    PhonesList,
    AssignedList,
    AssignedAdd,
    AssignedRemove,
    SubscribedList,
    SubscribedAdd,
    SubscribedRemove,
    NumberStatusGet,
    ExtendedCredits,
    CreditShare,
    AllocationGet,
    AllocationDelete,
    OwningAllocations,
    PhoneGet,
    MessagesSend,
    BusinessGet,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    pub op: Op,
    /// The WABA the object belongs to; the token must have access to it.
    pub waba: Option<String>,
    /// The bucket this call counts against, if Meta's table lists it.
    pub bucket: Option<Scope>,
}

/// Everything an operation needs from the request.
pub(crate) struct Call<'a> {
    pub id: &'a str,
    pub params: &'a Params,
    /// Query parameters only, in order, for next/previous links.
    pub query: &'a [(String, String)],
    /// `scheme://host` of this request.
    pub origin: &'a str,
    /// The request path as received (with any version prefix).
    pub path: &'a str,
    pub app_id: &'a str,
}

/// Maps method + `/{id}[/{edge}]` to an operation. Unknown ids, edges or methods are Meta's
/// "Unsupported <method> request".
pub(crate) fn classify(
    data: &Data,
    method: &Method,
    id: &str,
    edge: Option<&str>,
) -> Result<Route, GraphError> {
    let unsupported = || GraphError::Unsupported {
        method: method.as_str().to_ascii_lowercase(),
        id: id.to_string(),
    };
    let kind = data.kind(id).ok_or_else(unsupported)?;
    let waba_route = |op, waba: &str| Route {
        op,
        waba: Some(waba.to_string()),
        bucket: Some(Scope::Waba(waba.to_string())),
    };
    let credit_route = |op, waba: Option<String>| Route {
        op,
        waba,
        bucket: Some(Scope::CreditLine),
    };
    let (g, p, d) = (
        method == Method::GET,
        method == Method::POST,
        method == Method::DELETE,
    );
    Ok(match (&kind, edge) {
        (Kind::Waba, None) if g => waba_route(Op::WabaGet, id),
        (Kind::Waba, Some("message_templates")) if g => waba_route(Op::TemplatesList, id),
        (Kind::Waba, Some("message_templates")) if p => waba_route(Op::TemplatesCreate, id),
        (Kind::Waba, Some("message_templates")) if d => waba_route(Op::TemplatesDelete, id),
        (Kind::Waba, Some("phone_numbers")) if g => waba_route(Op::PhonesList, id),
        (Kind::Waba, Some("assigned_users")) if g => waba_route(Op::AssignedList, id),
        (Kind::Waba, Some("assigned_users")) if p => waba_route(Op::AssignedAdd, id),
        (Kind::Waba, Some("assigned_users")) if d => waba_route(Op::AssignedRemove, id),
        (Kind::Waba, Some("subscribed_apps")) if g => waba_route(Op::SubscribedList, id),
        (Kind::Waba, Some("subscribed_apps")) if p => waba_route(Op::SubscribedAdd, id),
        (Kind::Waba, Some("subscribed_apps")) if d => waba_route(Op::SubscribedRemove, id),
        (Kind::NumberStatus { waba }, None) if g => waba_route(Op::NumberStatusGet, waba),
        (Kind::Business, Some("extendedcredits")) if g => credit_route(Op::ExtendedCredits, None),
        // The target WABA is a parameter; its access check happens in `execute`.
        (Kind::Credit, Some("whatsapp_credit_sharing_and_attach")) if p => {
            credit_route(Op::CreditShare, None)
        }
        (Kind::Credit, Some("owning_credit_allocation_configs")) if g => {
            credit_route(Op::OwningAllocations, None)
        }
        (Kind::Allocation { waba }, None) if g => {
            credit_route(Op::AllocationGet, Some(waba.clone()))
        }
        (Kind::Allocation { waba }, None) if d => {
            credit_route(Op::AllocationDelete, Some(waba.clone()))
        }
        // Not in Meta's BUC table, so never counted.
        (Kind::Phone { waba }, None) if g => Route {
            op: Op::PhoneGet,
            waba: Some(waba.clone()),
            bucket: None,
        },
        (Kind::Phone { waba }, Some("messages")) if p => Route {
            op: Op::MessagesSend,
            waba: Some(waba.clone()),
            bucket: None,
        },
        (Kind::Business, None) if g => Route {
            op: Op::BusinessGet,
            waba: None,
            bucket: None,
        },
        _ => return Err(unsupported()),
    })
}

fn success() -> Value {
    json!({ "success": true })
}

fn required<'p>(params: &'p Params, key: &str) -> Result<&'p str, GraphError> {
    params
        .get(key)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| GraphError::InvalidParam(format!("The parameter {key} is required")))
}

/// Pages a rendered list and adds Meta's `paging` object (cursors, absolute next/previous links).
fn paged(items: Vec<Value>, call: &Call) -> Result<Value, GraphError> {
    let p = call.params;
    let page = paging::page(items.len(), p.get("limit"), p.get("after"), p.get("before"))?;
    let data: Vec<Value> = items.get(page.start..page.end).unwrap_or_default().to_vec();
    if data.is_empty() {
        return Ok(json!({ "data": [] }));
    }
    let (before, after) = (
        paging::encode_cursor(page.start),
        paging::encode_cursor(page.end - 1),
    );
    let mut paging_obj = json!({ "cursors": { "before": before, "after": after } });
    if page.has_next {
        paging_obj["next"] = json!(paging::link(
            call.origin,
            call.path,
            call.query,
            page.limit,
            "after",
            &after
        ));
    }
    if page.has_prev {
        paging_obj["previous"] = json!(paging::link(
            call.origin,
            call.path,
            call.query,
            page.limit,
            "before",
            &before
        ));
    }
    Ok(json!({ "data": data, "paging": paging_obj }))
}

/// Runs an operation against the store.
pub(crate) fn execute(
    data: &mut Data,
    route: &Route,
    call: &Call,
    may_touch: impl Fn(&str) -> bool,
) -> Result<Value, GraphError> {
    let fields = call.params.get("fields").map(parse_fields);
    let fields = fields.as_deref();
    let id = call.id;
    let gone = || GraphError::Unsupported {
        method: "get".into(),
        id: id.to_string(),
    };
    match route.op {
        Op::WabaGet => data.render_waba(id, fields),
        Op::TemplatesList => {
            let w = data.waba(id).ok_or_else(gone)?;
            let filter = |key: &str, v: &str| call.params.get(key).is_none_or(|want| want == v);
            let items = w
                .templates
                .iter()
                .filter(|t| {
                    filter("name", &t.name)
                        && filter("language", &t.language)
                        && filter("status", &t.status)
                        && filter("category", &t.category)
                })
                .map(|t| t.render(fields))
                .collect::<Result<Vec<_>, _>>()?;
            paged(items, call)
        }
        Op::TemplatesCreate => {
            let name = required(call.params, "name")?.to_string();
            let language = required(call.params, "language")?.to_string();
            let category = required(call.params, "category")?.to_ascii_uppercase();
            let components: Value = serde_json::from_str(required(call.params, "components")?)
                .ok()
                .filter(Value::is_array)
                .ok_or_else(|| {
                    GraphError::InvalidParam("Param components must be an array".into())
                })?;
            if name.len() > 512
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(GraphError::InvalidParam(
                    "Param name must contain only lowercase alphanumeric characters and underscores".into(),
                ));
            }
            let new_id = data.new_id();
            let w = data.waba_mut(id).ok_or_else(gone)?;
            if w.templates
                .iter()
                .any(|t| t.name == name && t.language == language)
            {
                return Err(GraphError::DuplicateTemplate);
            }
            w.templates.push(Template {
                id: new_id.clone(),
                name,
                language,
                status: "PENDING".into(),
                category: category.clone(),
                components,
            });
            Ok(json!({ "id": new_id, "status": "PENDING", "category": category }))
        }
        Op::TemplatesDelete => {
            let name = required(call.params, "name")?.to_string();
            let hsm_id = call.params.get("hsm_id").map(str::to_string);
            let w = data.waba_mut(id).ok_or_else(gone)?;
            let before = w.templates.len();
            w.templates
                .retain(|t| !(t.name == name && hsm_id.as_ref().is_none_or(|h| *h == t.id)));
            if w.templates.len() == before {
                return Err(GraphError::InvalidParam(format!(
                    "Message template \"{name}\" does not exist"
                )));
            }
            Ok(success())
        }
        Op::PhonesList => {
            let items = data
                .phones_of(id)
                .into_iter()
                .map(|p| p.render(fields))
                .collect::<Result<Vec<_>, _>>()?;
            paged(items, call)
        }
        Op::AssignedList => {
            let w = data.waba(id).ok_or_else(gone)?;
            let items = w
                .assigned_users
                .iter()
                .map(|u| json!({ "id": u.id, "name": u.name, "tasks": u.tasks, "permitted_tasks": u.tasks }))
                .collect();
            paged(items, call)
        }
        Op::AssignedAdd => {
            let user = required(call.params, "user")?.to_string();
            let tasks = parse_tasks(call.params.get("tasks").unwrap_or("MANAGE"));
            let w = data.waba_mut(id).ok_or_else(gone)?;
            match w.assigned_users.iter_mut().find(|u| u.id == user) {
                Some(u) => u.tasks = tasks,
                None => w.assigned_users.push(AssignedUser {
                    name: format!("User {user}"),
                    id: user,
                    tasks,
                }),
            }
            Ok(success())
        }
        Op::AssignedRemove => {
            let user = required(call.params, "user")?.to_string();
            let w = data.waba_mut(id).ok_or_else(gone)?;
            w.assigned_users.retain(|u| u.id != user);
            Ok(success())
        }
        Op::SubscribedList => {
            let w = data.waba(id).ok_or_else(gone)?;
            let items = w
                .subscribed_apps
                .iter()
                .map(|app| {
                    json!({ "whatsapp_business_api_data": {
                        "id": app, "name": format!("App {app}"), "link": format!("https://www.facebook.com/games/?app_id={app}"),
                    }})
                })
                .collect();
            paged(items, call)
        }
        Op::SubscribedAdd => {
            let w = data.waba_mut(id).ok_or_else(gone)?;
            if !w.subscribed_apps.iter().any(|a| a == call.app_id) {
                w.subscribed_apps.push(call.app_id.to_string());
            }
            Ok(success())
        }
        Op::SubscribedRemove => {
            let w = data.waba_mut(id).ok_or_else(gone)?;
            w.subscribed_apps.retain(|a| a != call.app_id);
            Ok(success())
        }
        Op::NumberStatusGet => data.number_status(id).ok_or_else(gone),
        Op::ExtendedCredits => {
            let list = data.extended_credits(id);
            let items = list["data"].as_array().cloned().unwrap_or_default();
            paged(items, call)
        }
        Op::CreditShare => {
            let waba = required(call.params, "waba_id")?.to_string();
            if data.waba(&waba).is_none() {
                return Err(GraphError::InvalidParam(
                    "Param waba_id must be a valid WhatsApp Business Account id".into(),
                ));
            }
            if !may_touch(&waba) {
                return Err(GraphError::Permission);
            }
            let currency = call
                .params
                .get("waba_currency")
                .unwrap_or("USD")
                .to_string();
            let alloc = data.add_allocation(id, &waba, &currency);
            Ok(json!({ "allocation_config_id": alloc, "waba_id": waba }))
        }
        Op::AllocationGet => data.allocation(id).map(|a| a.render()).ok_or_else(gone),
        Op::AllocationDelete => {
            if data.remove_allocation(id) {
                Ok(success())
            } else {
                Err(gone())
            }
        }
        Op::OwningAllocations => {
            let items = data
                .allocations_of(id)
                .into_iter()
                .map(|a| a.render())
                .collect();
            paged(items, call)
        }
        Op::PhoneGet => data.phone(id).ok_or_else(gone)?.render(fields),
        Op::MessagesSend => {
            let product = required(call.params, "messaging_product")?;
            if product != "whatsapp" {
                return Err(GraphError::InvalidParam(
                    "Param messaging_product must be whatsapp".into(),
                ));
            }
            let to = required(call.params, "to")?.to_string();
            let wa_id: String = to.chars().filter(char::is_ascii_digit).collect();
            Ok(json!({
                "messaging_product": "whatsapp",
                "contacts": [{ "input": to, "wa_id": wa_id }],
                "messages": [{ "id": wamid() }],
            }))
        }
        Op::BusinessGet => Ok(data.business(id)),
    }
}

/// `tasks` arrives as `['MANAGE','DEVELOP']`, `["MANAGE"]` or `MANAGE,DEVELOP`.
fn parse_tasks(raw: &str) -> Vec<String> {
    raw.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|t| t.trim().trim_matches(|c| c == '\'' || c == '"').to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

/// A message id shaped like Meta's `wamid.HBgL...`.
fn wamid() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let tail: String = (0..44)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("wamid.HBgL{tail}=")
}

#[cfg(test)]
mod unit {
    use super::super::data::seed;
    use super::*;

    // Every endpoint in Meta's BUC table lands in the right bucket; messaging and phone reads don't count.
    #[test]
    fn buc_table_endpoints_map_to_their_buckets() {
        let d = Data::seeded();
        let w = Some(Scope::Waba(seed::WABA_ID.into()));
        let c = Some(Scope::CreditLine);
        let cases: &[(Method, &str, Option<&str>, Option<Scope>)] = &[
            (Method::GET, seed::WABA_ID, None, w.clone()),
            (
                Method::DELETE,
                seed::WABA_ID,
                Some("assigned_users"),
                w.clone(),
            ),
            (Method::GET, seed::WABA_ID, Some("phone_numbers"), w.clone()),
            (
                Method::POST,
                seed::WABA_ID,
                Some("message_templates"),
                w.clone(),
            ),
            (
                Method::DELETE,
                seed::WABA_ID,
                Some("subscribed_apps"),
                w.clone(),
            ),
            (Method::GET, seed::WABA_TO_NUMBER_STATUS_ID, None, w.clone()),
            (
                Method::GET,
                seed::BUSINESS_ID,
                Some("extendedcredits"),
                c.clone(),
            ),
            (
                Method::POST,
                seed::EXTENDED_CREDIT_ID,
                Some("whatsapp_credit_sharing_and_attach"),
                c.clone(),
            ),
            (Method::DELETE, seed::ALLOCATION_CONFIG_ID, None, c.clone()),
            (
                Method::GET,
                seed::EXTENDED_CREDIT_ID,
                Some("owning_credit_allocation_configs"),
                c.clone(),
            ),
            (Method::GET, seed::PHONE_NUMBER_ID, None, None),
            (Method::POST, seed::PHONE_NUMBER_ID, Some("messages"), None),
        ];
        for (m, id, edge, bucket) in cases {
            let r = classify(&d, m, id, *edge).expect("route");
            assert_eq!(&r.bucket, bucket, "{m} {id} {edge:?}");
        }
        assert!(classify(&d, &Method::POST, seed::WABA_ID, None).is_err());
        assert!(classify(&d, &Method::GET, "999", None).is_err());
    }

    #[test]
    fn tasks_parse_in_every_shape() {
        assert_eq!(
            parse_tasks("['MANAGE', \"DEVELOP\"]"),
            vec!["MANAGE", "DEVELOP"]
        );
        assert_eq!(parse_tasks("MANAGE"), vec!["MANAGE"]);
    }
}
