//! Routes to budgets: which of Meta's rate-limit buckets (the seed's table) a call spends, as the
//! limiter's own [`Scope`], so a classified call and its bucket are one value.
//!
//! A pure, table-driven function of the method, the target and what graphgate knows about object
//! ids. It must never do I/O or look at bodies; learning new ids (allocation configs, status ids)
//! happens elsewhere and is passed in through [`Known`].

use http::Method;

pub use crate::limits::{Known, Scope};
use crate::target::Target;

/// What kind of object the first path segment must be for a row to match.
#[derive(Clone, Copy)]
enum Root {
    /// Any id (the edge name alone says what the root is).
    Any,
    Waba,
    StatusId,
    AllocationConfig,
}

/// Which budget a row of the table counts a call against (the WABA's is resolved from the path).
#[derive(Clone, Copy)]
enum Counts {
    Waba,
    CreditLine,
}

/// The seed's rate-limit table, one row per (methods, root kind, edge).
const TABLE: &[(&[&str], Root, Option<&str>, Counts)] = &[
    (&["GET"], Root::Waba, None, Counts::Waba),
    (
        &["GET", "POST", "DELETE"],
        Root::Any,
        Some("assigned_users"),
        Counts::Waba,
    ),
    (&["GET"], Root::Any, Some("phone_numbers"), Counts::Waba),
    (
        &["GET", "POST", "DELETE"],
        Root::Any,
        Some("message_templates"),
        Counts::Waba,
    ),
    (
        &["GET", "POST", "DELETE"],
        Root::Any,
        Some("subscribed_apps"),
        Counts::Waba,
    ),
    (&["GET"], Root::StatusId, None, Counts::Waba),
    (
        &["GET"],
        Root::Any,
        Some("extendedcredits"),
        Counts::CreditLine,
    ),
    (
        &["POST"],
        Root::Any,
        Some("whatsapp_credit_sharing_and_attach"),
        Counts::CreditLine,
    ),
    (
        &["GET", "DELETE"],
        Root::AllocationConfig,
        None,
        Counts::CreditLine,
    ),
    (
        &["GET"],
        Root::Any,
        Some("owning_credit_allocation_configs"),
        Counts::CreditLine,
    ),
];

/// The class of one call. HEAD is counted like GET: Meta serves it as a GET.
pub fn classify(method: &Method, target: &Target, known: &Known) -> Scope {
    let m = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    let Some(root) = target.root() else {
        return Scope::Other;
    };
    // Deeper paths (`/{waba}/message_templates/x`) are not in the table.
    if target.segments.len() > 2 {
        return Scope::Other;
    }
    let edge = target.edge();
    for (methods, kind, row_edge, bucket) in TABLE {
        if *row_edge != edge || !methods.contains(&m) {
            continue;
        }
        let owner = match kind {
            Root::Any => Some(root.to_string()),
            Root::Waba => known.wabas.contains(root).then(|| root.to_string()),
            Root::StatusId => known.status_ids.get(root).cloned(),
            Root::AllocationConfig => known
                .allocation_configs
                .contains(root)
                .then(|| root.to_string()),
        };
        if let Some(owner) = owner {
            return match bucket {
                Counts::Waba => Scope::Waba(owner),
                Counts::CreditLine => Scope::CreditLine,
            };
        }
    }
    Scope::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Known {
        let mut k = Known::default();
        k.wabas.insert("100".into());
        k.status_ids.insert("300".into(), "100".into());
        k.allocation_configs.insert("400".into());
        k
    }

    fn class(method: &str, path: &str) -> Scope {
        let t = Target::parse(path, None).unwrap();
        classify(&method.parse().unwrap(), &t, &known())
    }

    // One assertion per row of the seed's table, plus the methods each row leaves out.
    #[test]
    fn every_row_of_the_seed_table_is_classified() {
        let waba = Scope::Waba("100".into());
        assert_eq!(class("GET", "/v19.0/100"), waba);
        assert_eq!(class("POST", "/v19.0/100"), Scope::Other);
        for m in ["GET", "POST", "DELETE"] {
            assert_eq!(
                class(m, "/v19.0/100/assigned_users"),
                waba,
                "{m} assigned_users"
            );
            assert_eq!(
                class(m, "/v19.0/100/message_templates"),
                waba,
                "{m} message_templates"
            );
            assert_eq!(
                class(m, "/100/subscribed_apps"),
                waba,
                "{m} subscribed_apps"
            );
        }
        assert_eq!(class("GET", "/100/phone_numbers"), waba);
        assert_eq!(class("POST", "/100/phone_numbers"), Scope::Other);
        assert_eq!(class("GET", "/300"), waba, "status id counts to its WABA");
        assert_eq!(
            class("GET", "/v19.0/500/extendedcredits"),
            Scope::CreditLine
        );
        assert_eq!(class("POST", "/v19.0/500/extendedcredits"), Scope::Other);
        assert_eq!(
            class("POST", "/600/whatsapp_credit_sharing_and_attach"),
            Scope::CreditLine
        );
        assert_eq!(
            class("GET", "/600/whatsapp_credit_sharing_and_attach"),
            Scope::Other
        );
        assert_eq!(class("GET", "/400"), Scope::CreditLine);
        assert_eq!(class("DELETE", "/400"), Scope::CreditLine);
        assert_eq!(
            class("GET", "/600/owning_credit_allocation_configs"),
            Scope::CreditLine
        );
    }

    // Calls outside the table stay `other`.
    #[test]
    fn calls_outside_the_table_are_other() {
        assert_eq!(class("POST", "/106540352242922/messages"), Scope::Other);
        assert_eq!(class("GET", "/999"), Scope::Other, "an unknown object");
        assert_eq!(class("POST", "/"), Scope::Other, "batch root");
        assert_eq!(class("GET", "/100/message_templates/extra"), Scope::Other);
        assert_eq!(class("HEAD", "/100"), Scope::Waba("100".into()));
    }
}
