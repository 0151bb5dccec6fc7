//! The simulated Graph objects (WABAs, phone numbers, templates, credit lines) and their JSON views.
//! Owns seeding, lookups and mutations; never counts calls, checks tokens or builds HTTP responses.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::error::GraphError;

/// Ids of the seeded objects, for tests and demos.
pub mod seed {
    /// The seed document's example WABA; active (its number is on CLOUD_API).
    pub const WABA_ID: &str = "102290129340398";
    /// The seed document's example phone number, on [`WABA_ID`].
    pub const PHONE_NUMBER_ID: &str = "106540352242922";
    /// A WABA whose only number is NOT_APPLICABLE (not registered), so it gets the lower limit.
    pub const INACTIVE_WABA_ID: &str = "104996122399160";
    /// The unregistered number on [`INACTIVE_WABA_ID`].
    pub const INACTIVE_PHONE_NUMBER_ID: &str = "107655329040392";
    /// A business with one extended credit line.
    pub const BUSINESS_ID: &str = "506914307656634";
    pub const EXTENDED_CREDIT_ID: &str = "1972385232742146";
    /// An allocation config sharing [`EXTENDED_CREDIT_ID`] with [`WABA_ID`].
    pub const ALLOCATION_CONFIG_ID: &str = "58501441721238";
    /// The WABA-to-number current status object of [`PHONE_NUMBER_ID`].
    pub const WABA_TO_NUMBER_STATUS_ID: &str = "1089147868485218";
    /// hello_world's id, from the seed document.
    pub const HELLO_WORLD_TEMPLATE_ID: &str = "307191531401674";
    /// Templates on [`WABA_ID`] at start: hello_world, sample_flight_confirmation and 25 generated.
    pub const TEMPLATE_COUNT: usize = 27;
}

#[derive(Debug, Clone)]
pub(crate) struct Template {
    pub id: String,
    pub name: String,
    pub language: String,
    pub status: String,
    pub category: String,
    pub components: Value,
}

#[derive(Debug, Clone)]
pub(crate) struct AssignedUser {
    pub id: String,
    pub name: String,
    pub tasks: Vec<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Waba {
    pub id: String,
    pub name: String,
    pub timezone_id: String,
    pub namespace: String,
    pub currency: String,
    pub templates: Vec<Template>,
    pub assigned_users: Vec<AssignedUser>,
    /// App ids subscribed to this WABA's webhooks.
    pub subscribed_apps: Vec<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Phone {
    pub id: String,
    pub waba_id: String,
    pub display_phone_number: String,
    pub verified_name: String,
    pub code_verification_status: String,
    pub quality_rating: String,
    pub platform_type: String,
    pub status: String,
    pub throughput_level: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Allocation {
    pub id: String,
    pub credit_id: String,
    pub waba_id: String,
    pub currency: String,
}

/// What an id names; routes dispatch on this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    Waba,
    Phone { waba: String },
    Business,
    Credit,
    Allocation { waba: String },
    NumberStatus { waba: String },
}

#[derive(Debug)]
pub(crate) struct Data {
    wabas: BTreeMap<String, Waba>,
    phones: BTreeMap<String, Phone>,
    /// business id -> (name, extended credit ids)
    businesses: BTreeMap<String, (String, Vec<String>)>,
    /// extended credit id -> (business id, legal entity name)
    credits: BTreeMap<String, (String, String)>,
    allocations: BTreeMap<String, Allocation>,
    /// WABA-to-number current status id -> phone number id
    number_status: BTreeMap<String, String>,
    next_id: u64,
}

/// One requested field, with optional `{sub,fields}`; modifiers like `.limit(5)` are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Field {
    pub name: String,
    pub sub: Option<Vec<Field>>,
}

/// Parses Graph's `fields=a,b{c,d},e.limit(2)` without ever failing: junk yields odd names, which are then
/// reported as nonexisting fields.
pub(crate) fn parse_fields(s: &str) -> Vec<Field> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '{' | '(' => depth += 1,
            '}' | ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let end = p.find(['{', '.']).unwrap_or(p.len());
            let sub = p[end..]
                .strip_prefix('{')
                .and_then(|r| r.rfind('}').map(|j| parse_fields(&r[..j])));
            Field {
                name: p[..end].trim().to_string(),
                sub,
            }
        })
        .collect()
}

fn select(
    all: Map<String, Value>,
    fields: Option<&[Field]>,
    default: &[&str],
    node: &'static str,
) -> Result<Value, GraphError> {
    let mut out = Map::new();
    match fields {
        None => {
            for f in default {
                if let Some(v) = all.get(*f) {
                    out.insert((*f).to_string(), v.clone());
                }
            }
        }
        Some(fields) => {
            for f in fields {
                match all.get(&f.name) {
                    Some(v) => {
                        out.insert(f.name.clone(), v.clone());
                    }
                    None => {
                        return Err(GraphError::NonexistingField {
                            field: f.name.clone(),
                            node,
                        })
                    }
                }
            }
        }
    }
    // Graph always returns the id.
    if let Some(id) = all.get("id") {
        out.insert("id".into(), id.clone());
    }
    Ok(Value::Object(out))
}

const TEMPLATE_DEFAULT: &[&str] = &["name", "components", "language", "status", "category", "id"];
const PHONE_DEFAULT: &[&str] = &[
    "verified_name",
    "code_verification_status",
    "display_phone_number",
    "quality_rating",
    "platform_type",
    "throughput",
    "id",
];
const WABA_DEFAULT: &[&str] = &["id", "name", "timezone_id", "message_template_namespace"];

impl Template {
    pub(crate) fn render(&self, fields: Option<&[Field]>) -> Result<Value, GraphError> {
        let all = json!({
            "id": self.id, "name": self.name, "language": self.language, "status": self.status,
            "category": self.category, "components": self.components,
            "quality_score": {"score": "UNKNOWN"}, "rejected_reason": "NONE", "parameter_format": "POSITIONAL",
        });
        select(
            obj(all),
            fields,
            TEMPLATE_DEFAULT,
            "WhatsAppMessageTemplate",
        )
    }
}

impl Phone {
    pub(crate) fn registered(&self) -> bool {
        matches!(self.platform_type.as_str(), "CLOUD_API" | "ON_PREMISE")
    }

    pub(crate) fn render(&self, fields: Option<&[Field]>) -> Result<Value, GraphError> {
        let all = json!({
            "id": self.id, "display_phone_number": self.display_phone_number, "verified_name": self.verified_name,
            "code_verification_status": self.code_verification_status, "quality_rating": self.quality_rating,
            "platform_type": self.platform_type, "throughput": {"level": self.throughput_level},
            "status": self.status, "name_status": "APPROVED", "account_mode": "LIVE",
            "is_official_business_account": false, "messaging_limit_tier": "TIER_1K",
        });
        select(
            obj(all),
            fields,
            PHONE_DEFAULT,
            "WhatsAppBusinessPhoneNumber",
        )
    }
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

impl Data {
    pub(crate) fn seeded() -> Data {
        let mut templates = vec![
            Template {
                id: seed::HELLO_WORLD_TEMPLATE_ID.into(),
                name: "hello_world".into(),
                language: "en_US".into(),
                status: "APPROVED".into(),
                category: "ACCOUNT_UPDATE".into(),
                components: json!([
                    {"type": "HEADER", "format": "TEXT", "text": "Hello World"},
                    {"type": "BODY", "text": "Welcome and congratulations!! This message demonstrates your ability to send a message notification from WhatsApp Business Platform. Thank you for taking the time to test with us."},
                    {"type": "FOOTER", "text": "WhatsApp Business Team"}
                ]),
            },
            Template {
                id: "307191531401675".into(),
                name: "sample_flight_confirmation".into(),
                language: "es".into(),
                status: "APPROVED".into(),
                category: "TICKET_UPDATE".into(),
                components: json!([
                    {"type": "HEADER", "format": "DOCUMENT"},
                    {"type": "BODY", "text": "Confirmamos tu vuelo a {{1}}-{{2}} para el {{3}}."},
                    {"type": "FOOTER", "text": "Este mensaje proviene de un negocio no verificado."}
                ]),
            },
        ];
        let categories = ["UTILITY", "MARKETING", "AUTHENTICATION"];
        let statuses = ["APPROVED", "APPROVED", "APPROVED", "PENDING", "REJECTED"];
        for i in 1..=25u64 {
            let i_us = usize::try_from(i).unwrap_or(0);
            templates.push(Template {
                id: (880000000000000 + i).to_string(),
                name: format!("generated_template_{i:02}"),
                language: if i % 4 == 0 { "es".into() } else { "en_US".into() },
                status: statuses[i_us % statuses.len()].into(),
                category: categories[i_us % categories.len()].into(),
                components: json!([{"type": "BODY", "text": format!("Hi {{{{1}}}}, this is generated template {i}.")}]),
            });
        }
        let mut wabas = BTreeMap::new();
        wabas.insert(
            seed::WABA_ID.to_string(),
            Waba {
                id: seed::WABA_ID.into(),
                name: "Your WhatsApp Business Account Name".into(),
                timezone_id: "1".into(),
                namespace: "05155c78_261e_4b2f_82b3_d7958d4cf75f".into(),
                currency: "USD".into(),
                templates,
                assigned_users: vec![AssignedUser {
                    id: "122104455012345678".into(),
                    name: "Lucky Shrub System User".into(),
                    tasks: vec!["MANAGE".into(), "DEVELOP".into()],
                }],
                subscribed_apps: Vec::new(),
            },
        );
        wabas.insert(
            seed::INACTIVE_WABA_ID.to_string(),
            Waba {
                id: seed::INACTIVE_WABA_ID.into(),
                name: "Test WhatsApp Business Account".into(),
                timezone_id: "1".into(),
                namespace: "7a8c2f41_93d0_4c3e_a1b5_0e6f2d9b8c17".into(),
                currency: "USD".into(),
                templates: vec![Template {
                    id: "307191531409999".into(),
                    name: "hello_world".into(),
                    language: "en_US".into(),
                    status: "APPROVED".into(),
                    category: "UTILITY".into(),
                    components: json!([{"type": "BODY", "text": "Hello World"}]),
                }],
                assigned_users: Vec::new(),
                subscribed_apps: Vec::new(),
            },
        );
        let mut phones = BTreeMap::new();
        phones.insert(
            seed::PHONE_NUMBER_ID.to_string(),
            Phone {
                id: seed::PHONE_NUMBER_ID.into(),
                waba_id: seed::WABA_ID.into(),
                display_phone_number: "15550783881".into(),
                verified_name: "Lucky Shrub".into(),
                code_verification_status: "VERIFIED".into(),
                quality_rating: "GREEN".into(),
                platform_type: "CLOUD_API".into(),
                status: "CONNECTED".into(),
                throughput_level: "STANDARD".into(),
            },
        );
        phones.insert(
            seed::INACTIVE_PHONE_NUMBER_ID.to_string(),
            Phone {
                id: seed::INACTIVE_PHONE_NUMBER_ID.into(),
                waba_id: seed::INACTIVE_WABA_ID.into(),
                display_phone_number: "15550001234".into(),
                verified_name: "Test Number".into(),
                code_verification_status: "NOT_VERIFIED".into(),
                quality_rating: "UNKNOWN".into(),
                platform_type: "NOT_APPLICABLE".into(),
                status: "PENDING".into(),
                throughput_level: "NOT_APPLICABLE".into(),
            },
        );
        let mut businesses = BTreeMap::new();
        businesses.insert(
            seed::BUSINESS_ID.to_string(),
            (
                "Lucky Shrub".to_string(),
                vec![seed::EXTENDED_CREDIT_ID.to_string()],
            ),
        );
        let mut credits = BTreeMap::new();
        credits.insert(
            seed::EXTENDED_CREDIT_ID.to_string(),
            (
                seed::BUSINESS_ID.to_string(),
                "Lucky Shrub Inc.".to_string(),
            ),
        );
        let mut allocations = BTreeMap::new();
        allocations.insert(
            seed::ALLOCATION_CONFIG_ID.to_string(),
            Allocation {
                id: seed::ALLOCATION_CONFIG_ID.into(),
                credit_id: seed::EXTENDED_CREDIT_ID.into(),
                waba_id: seed::WABA_ID.into(),
                currency: "USD".into(),
            },
        );
        let mut number_status = BTreeMap::new();
        number_status.insert(
            seed::WABA_TO_NUMBER_STATUS_ID.to_string(),
            seed::PHONE_NUMBER_ID.to_string(),
        );
        Data {
            wabas,
            phones,
            businesses,
            credits,
            allocations,
            number_status,
            next_id: 1_100_000_000_000_000,
        }
    }

    /// A fresh numeric id for created objects.
    pub(crate) fn new_id(&mut self) -> String {
        self.next_id += 1;
        self.next_id.to_string()
    }

    pub(crate) fn kind(&self, id: &str) -> Option<Kind> {
        if self.wabas.contains_key(id) {
            Some(Kind::Waba)
        } else if let Some(p) = self.phones.get(id) {
            Some(Kind::Phone {
                waba: p.waba_id.clone(),
            })
        } else if self.businesses.contains_key(id) {
            Some(Kind::Business)
        } else if self.credits.contains_key(id) {
            Some(Kind::Credit)
        } else if let Some(a) = self.allocations.get(id) {
            Some(Kind::Allocation {
                waba: a.waba_id.clone(),
            })
        } else {
            let phone = self.number_status.get(id)?;
            Some(Kind::NumberStatus {
                waba: self.phones.get(phone)?.waba_id.clone(),
            })
        }
    }

    /// Meta's "active WABA": at least one number registered with Cloud API or On-Premises API.
    pub(crate) fn is_active(&self, waba: &str) -> bool {
        self.phones
            .values()
            .any(|p| p.waba_id == waba && p.registered())
    }

    /// Registers or deregisters a number, as Meta's register/deregister calls would.
    pub(crate) fn set_platform_type(&mut self, phone: &str, platform_type: &str) -> bool {
        match self.phones.get_mut(phone) {
            Some(p) => {
                p.platform_type = platform_type.to_string();
                true
            }
            None => false,
        }
    }

    pub(crate) fn waba_ids(&self) -> Vec<String> {
        self.wabas.keys().cloned().collect()
    }

    pub(crate) fn waba(&self, id: &str) -> Option<&Waba> {
        self.wabas.get(id)
    }

    pub(crate) fn waba_mut(&mut self, id: &str) -> Option<&mut Waba> {
        self.wabas.get_mut(id)
    }

    pub(crate) fn phone(&self, id: &str) -> Option<&Phone> {
        self.phones.get(id)
    }

    pub(crate) fn phones_of(&self, waba: &str) -> Vec<&Phone> {
        self.phones.values().filter(|p| p.waba_id == waba).collect()
    }

    pub(crate) fn render_waba(
        &self,
        id: &str,
        fields: Option<&[Field]>,
    ) -> Result<Value, GraphError> {
        let Some(w) = self.wabas.get(id) else {
            return Ok(Value::Null);
        };
        let mut all = obj(json!({
            "id": w.id, "name": w.name, "timezone_id": w.timezone_id,
            "message_template_namespace": w.namespace, "currency": w.currency,
            "account_review_status": "APPROVED", "business_verification_status": "verified",
            "ownership_type": "CLIENT_OWNED",
        }));
        // Edges are only expanded when asked for; they can be large.
        if let Some(fields) = fields {
            for f in fields {
                let sub = f.sub.as_deref();
                let data = match f.name.as_str() {
                    "message_templates" => w
                        .templates
                        .iter()
                        .take(25)
                        .map(|t| t.render(sub))
                        .collect::<Result<Vec<_>, _>>()?,
                    "phone_numbers" => self
                        .phones_of(id)
                        .into_iter()
                        .map(|p| p.render(sub))
                        .collect::<Result<Vec<_>, _>>()?,
                    _ => continue,
                };
                all.insert(f.name.clone(), json!({ "data": data }));
            }
        }
        select(all, fields, WABA_DEFAULT, "WhatsAppBusinessAccount")
    }

    pub(crate) fn extended_credits(&self, business: &str) -> Value {
        let data: Vec<Value> = self
            .businesses
            .get(business)
            .map(|(_, ids)| ids.as_slice())
            .unwrap_or_default()
            .iter()
            .filter_map(|id| {
                let (_, legal) = self.credits.get(id)?;
                Some(json!({"id": id, "legal_entity_name": legal}))
            })
            .collect();
        json!({ "data": data })
    }

    pub(crate) fn business(&self, id: &str) -> Value {
        let name = self
            .businesses
            .get(id)
            .map(|(n, _)| n.as_str())
            .unwrap_or_default();
        json!({"id": id, "name": name})
    }

    pub(crate) fn allocation(&self, id: &str) -> Option<&Allocation> {
        self.allocations.get(id)
    }

    pub(crate) fn add_allocation(
        &mut self,
        credit_id: &str,
        waba_id: &str,
        currency: &str,
    ) -> String {
        let id = self.new_id();
        self.allocations.insert(
            id.clone(),
            Allocation {
                id: id.clone(),
                credit_id: credit_id.into(),
                waba_id: waba_id.into(),
                currency: currency.into(),
            },
        );
        id
    }

    pub(crate) fn remove_allocation(&mut self, id: &str) -> bool {
        self.allocations.remove(id).is_some()
    }

    pub(crate) fn allocations_of(&self, credit_id: &str) -> Vec<&Allocation> {
        self.allocations
            .values()
            .filter(|a| a.credit_id == credit_id)
            .collect()
    }

    pub(crate) fn number_status(&self, id: &str) -> Option<Value> {
        let p = self.phones.get(self.number_status.get(id)?)?;
        Some(json!({
            "id": id, "waba_id": p.waba_id, "phone_number_id": p.id,
            "status": p.status, "can_send_message": if p.status == "CONNECTED" { "AVAILABLE" } else { "BLOCKED" },
        }))
    }
}

impl Allocation {
    pub(crate) fn render(&self) -> Value {
        json!({
            "id": self.id, "receiving_credential": {"id": self.waba_id}, "request_status": "ACTIVE",
            "credential_id": self.credit_id, "currency_amount": {"currency": self.currency}, "waba_id": self.waba_id,
        })
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    // Field lists with nested selections and modifiers parse into names and sub-fields.
    #[test]
    fn fields_parse_nested_selections() {
        let f = parse_fields("id, message_templates{name,language}.limit(2),phone_numbers,");
        assert_eq!(f.len(), 3);
        assert_eq!(f[1].name, "message_templates");
        assert_eq!(f[1].sub.as_ref().map(Vec::len), Some(2));
        assert_eq!(parse_fields("{{{,}}").len(), 1);
    }

    // The seed has the documented active WABA, an inactive one, and every id kind resolves.
    #[test]
    fn seed_ids_resolve_to_their_kinds() {
        let d = Data::seeded();
        assert!(d.is_active(seed::WABA_ID));
        assert!(!d.is_active(seed::INACTIVE_WABA_ID));
        assert_eq!(
            d.waba(seed::WABA_ID).map(|w| w.templates.len()),
            Some(seed::TEMPLATE_COUNT)
        );
        assert_eq!(d.kind(seed::BUSINESS_ID), Some(Kind::Business));
        assert_eq!(d.kind(seed::EXTENDED_CREDIT_ID), Some(Kind::Credit));
        assert_eq!(
            d.kind(seed::ALLOCATION_CONFIG_ID),
            Some(Kind::Allocation {
                waba: seed::WABA_ID.into()
            })
        );
        assert_eq!(
            d.kind(seed::WABA_TO_NUMBER_STATUS_ID),
            Some(Kind::NumberStatus {
                waba: seed::WABA_ID.into()
            })
        );
        assert_eq!(d.kind("nope"), None);
    }
}
