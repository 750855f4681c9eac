//! What a dialled string means inside a tenant, decided without I/O from the tenant's
//! configuration snapshot: an emergency number, one of its extensions, one of its own
//! numbers (DIDs) and what that number points at, or an external number and the outbound
//! routes to try for it, in order. The call engine acts on the decision; nothing here
//! reads a store, a clock or a socket.
//!
//! The engine's routing step (`routing::route_call`) acts on the decision.

use switchyard_store::{OutboundRouteSpec, RingGroupSpec, Target, TenantConfig, TimeConditionSpec};

/// Numbers that always reach an emergency route, before extensions and ignoring caps
/// (the store keeps them from being any extension's number or username).
pub use switchyard_store::EMERGENCY_NUMBERS;

/// The parts of a tenant's configuration the dial plan reads.
#[derive(Debug, Clone, Default)]
pub struct DialPlan {
    /// (number, SIP username, extension id)
    pub extensions: Vec<(String, String, String)>,
    /// The tenant's assigned numbers (E.164 with `+`) and their targets as stored
    /// (`extension:ID`, `ring_group:ID`, ..., `hangup`, or none).
    pub numbers: Vec<(String, Option<String>)>,
    /// Outbound routes: (resource id, spec).
    pub routes: Vec<(String, OutboundRouteSpec)>,
}

/// One outbound attempt: the route, its trunk, and the number as the trunk gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundAttempt {
    pub route_id: String,
    pub trunk_id: String,
    pub number: String,
}

/// The meaning of a dialled string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// An emergency number: these attempts, caps ignored (empty: no route can carry it).
    Emergency(Vec<OutboundAttempt>),
    /// An extension of the tenant (its id).
    Extension(String),
    /// One of the tenant's own numbers and what it points at (`None`: nowhere yet).
    OwnNumber {
        number: String,
        target: Option<Target>,
    },
    /// An external number: the routes to try, in order (failover goes down the list).
    External(Vec<OutboundAttempt>),
    /// A number no route of the tenant matches (`403`: the tenant cannot call out there).
    NoRoute,
    /// Not a number, or a number no longer than the tenant's extension numbers that is
    /// none of them and that no route matches (`404`: an internal number that does not
    /// exist, such as another tenant's extension).
    NotFound,
}

impl DialPlan {
    /// The dial plan of a configuration snapshot (routes whose spec does not parse are
    /// skipped: the store validates specs on write).
    pub fn of(config: &TenantConfig) -> DialPlan {
        DialPlan {
            extensions: config
                .extensions
                .iter()
                .map(|e| (e.number.to_string(), e.username.clone(), e.id.clone()))
                .collect(),
            numbers: config
                .dids
                .iter()
                .filter(|d| d.state == "assigned")
                .map(|d| (d.number.clone(), d.target.clone()))
                .collect(),
            routes: config
                .resources
                .iter()
                .filter(|r| r.kind == "outbound_route")
                .filter_map(|r| Some((r.id.clone(), serde_json::from_str(&r.spec).ok()?)))
                .collect(),
        }
    }

    /// Decides what `dialled` (the Request-URI's user part) means for this tenant.
    pub fn decide(&self, dialled: &str) -> Destination {
        if switchyard_store::is_emergency_number(dialled) {
            return Destination::Emergency(self.attempts(dialled));
        }
        if let Some((_, _, id)) = self
            .extensions
            .iter()
            .find(|(number, user, _)| number == dialled || user.eq_ignore_ascii_case(dialled))
        {
            return Destination::Extension(id.clone());
        }
        let e164 = if dialled.starts_with('+') {
            dialled.to_owned()
        } else {
            format!("+{dialled}")
        };
        if let Some((number, target)) = self.numbers.iter().find(|(n, _)| *n == e164) {
            return Destination::OwnNumber {
                number: number.clone(),
                target: target.as_deref().and_then(Target::decode),
            };
        }
        if !is_dialable(dialled) {
            return Destination::NotFound;
        }
        let attempts = self.attempts(dialled);
        let internal_length = self
            .extensions
            .iter()
            .map(|(number, _, _)| number.len())
            .max()
            .unwrap_or(0);
        if attempts.is_empty() && dialled.len() <= internal_length {
            Destination::NotFound
        } else if attempts.is_empty() {
            Destination::NoRoute
        } else {
            Destination::External(attempts)
        }
    }

    /// Every route whose pattern matches, by priority (lowest first; ties by route id so
    /// the order never depends on storage), with the number each sends.
    fn attempts(&self, dialled: &str) -> Vec<OutboundAttempt> {
        let mut matching: Vec<&(String, OutboundRouteSpec)> = self
            .routes
            .iter()
            .filter(|(_, r)| pattern_matches(&r.pattern, dialled))
            .collect();
        matching.sort_by(|a, b| (a.1.priority, &a.0).cmp(&(b.1.priority, &b.0)));
        matching
            .into_iter()
            .filter_map(|(id, r)| {
                let rest = dialled.get(usize::from(r.strip_digits)..)?;
                Some(OutboundAttempt {
                    route_id: id.clone(),
                    trunk_id: r.trunk_id.clone(),
                    number: format!("{}{rest}", r.prefix),
                })
            })
            .collect()
    }
}

/// What a number's target comes to at one instant: extensions to ring, or a refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Ring these extensions (ids) at once; `ring_seconds` from a ring group. A
    /// sequential group rings its first member here and `then` the others, one at a
    /// time, each for `ring_seconds`.
    Ring {
        extensions: Vec<String>,
        ring_seconds: Option<u32>,
        then: Vec<String>,
        /// A group's target once nobody answered.
        fallback: Option<Target>,
    },
    /// Answer the caller with this status and reason.
    Refuse(u16, &'static str),
}

/// How many targets one call may pass through (a time condition pointing at a time
/// condition ...) before the configuration counts as a loop.
const MAX_TARGET_DEPTH: usize = 8;

/// Follows `target` through the tenant's configuration at `at` (the engine's clock: time
/// conditions are open or closed at that instant, in their own zone); `turn` gives a
/// round-robin group's turn for this call (0, 1, 2, ...). Pure: the same configuration,
/// instant and turns give the same answer.
pub fn resolve_target(
    config: &TenantConfig,
    target: &Target,
    at: jiff::Timestamp,
    turn: &dyn Fn(&str) -> u64,
) -> Resolution {
    let mut target = target.clone();
    for _ in 0..MAX_TARGET_DEPTH {
        let spec = |id: &str, kind: &str| {
            config
                .resources
                .iter()
                .find(|r| r.id == id && r.kind == kind)
                .map(|r| r.spec.clone())
        };
        match target {
            Target::Extension(id) => {
                return Resolution::Ring {
                    extensions: vec![id],
                    ring_seconds: None,
                    then: Vec::new(),
                    fallback: None,
                };
            }
            Target::RingGroup(id) => {
                let Some(group) = spec(&id, "ring_group")
                    .and_then(|s| serde_json::from_str::<RingGroupSpec>(&s).ok())
                else {
                    return Resolution::Refuse(404, "The number's ring group does not exist");
                };
                let mut members = group.members;
                if group.strategy == "round_robin" && !members.is_empty() {
                    let start = turn(&id) % members.len() as u64;
                    members.rotate_left(start as usize);
                }
                let one_at_a_time = matches!(group.strategy.as_str(), "sequential" | "round_robin");
                let then = if one_at_a_time && members.len() > 1 {
                    members.split_off(1)
                } else {
                    Vec::new()
                };
                return Resolution::Ring {
                    extensions: members,
                    ring_seconds: Some(group.ring_seconds),
                    then,
                    fallback: group.fallback,
                };
            }
            Target::TimeCondition(id) => {
                let Some(condition) = spec(&id, "time_condition")
                    .and_then(|s| serde_json::from_str::<TimeConditionSpec>(&s).ok())
                else {
                    return Resolution::Refuse(404, "The number's time condition does not exist");
                };
                target = if condition.is_open(at) {
                    condition.open_target
                } else {
                    condition.closed_target
                };
            }
            Target::VoicemailBox(_) => {
                return Resolution::Refuse(480, "Voicemail cannot take calls yet");
            }
            Target::IvrMenu(_) => {
                return Resolution::Refuse(480, "IVR menus cannot take calls yet");
            }
            Target::Hangup => return Resolution::Refuse(603, "Declined"),
        }
    }
    Resolution::Refuse(500, "The number's targets form a loop")
}

/// The number the tenant presents as caller ID on an outbound call: `wanted` when it is
/// one of the tenant's own numbers, else the tenant's lowest number; never a number the
/// tenant does not hold (`None`: it holds none).
pub fn caller_id<'a>(plan: &'a DialPlan, wanted: Option<&str>) -> Option<&'a str> {
    let own = |n: &str| plan.numbers.iter().any(|(x, _)| x == n);
    if let Some(w) = wanted
        && own(w)
    {
        return plan
            .numbers
            .iter()
            .map(|(n, _)| n.as_str())
            .find(|n| *n == w);
    }
    plan.numbers.iter().map(|(n, _)| n.as_str()).min()
}

/// `dialled` as an E.164 number with its `+` (digits only, `+` optional), if it is one.
pub fn e164(dialled: &str) -> Option<String> {
    let digits = dialled.strip_prefix('+').unwrap_or(dialled);
    (!digits.is_empty() && digits.len() <= 15 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| format!("+{digits}"))
}

/// Whether `dialled` is a phone number at all: digits, with `+` first, `*` and `#`.
fn is_dialable(dialled: &str) -> bool {
    let digits = dialled.strip_prefix('+').unwrap_or(dialled);
    !digits.is_empty()
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'*' || b == b'#')
}

/// A dial pattern against a dialled string: digits and `+*#` match themselves, `X` any
/// digit, `N` 2-9, `Z` 1-9, and `.` one or more characters of any kind (the rest).
pub fn pattern_matches(pattern: &str, dialled: &str) -> bool {
    let mut d = dialled.bytes();
    for p in pattern.bytes() {
        if p == b'.' {
            return d.next().is_some();
        }
        let Some(c) = d.next() else {
            return false;
        };
        let ok = match p {
            b'X' => c.is_ascii_digit(),
            b'N' => (b'2'..=b'9').contains(&c),
            b'Z' => (b'1'..=b'9').contains(&c),
            _ => p == c,
        };
        if !ok {
            return false;
        }
    }
    d.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(
        pattern: &str,
        trunk: &str,
        strip: u8,
        prefix: &str,
        priority: u32,
    ) -> OutboundRouteSpec {
        OutboundRouteSpec {
            pattern: pattern.into(),
            trunk_id: trunk.into(),
            strip_digits: strip,
            prefix: prefix.into(),
            priority,
        }
    }

    fn plan() -> DialPlan {
        DialPlan {
            extensions: vec![
                ("1000".into(), "1000".into(), "ext-1000".into()),
                ("1001".into(), "alice".into(), "ext-1001".into()),
                // The store refuses such an extension; were one there, emergency wins.
                ("112".into(), "112".into(), "ext-112".into()),
            ],
            numbers: vec![
                ("+493012345678".into(), Some("ring_group:rg-1".into())),
                ("+493012345600".into(), Some("extension:ext-1000".into())),
                ("+493012345699".into(), None),
            ],
            routes: vec![
                // National calls: 0 then a non-zero digit; strip the 0, send +49.
                ("r-national".into(), route("0Z.", "trunk-a", 1, "+49", 10)),
                ("r-backup".into(), route("0Z.", "trunk-b", 1, "+49", 20)),
                ("r-intl".into(), route("00.", "trunk-a", 2, "+", 10)),
                ("r-e164".into(), route("+.", "trunk-a", 0, "", 10)),
                ("r-emergency".into(), route("112", "trunk-e", 0, "", 1)),
            ],
        }
    }

    #[test]
    fn patterns_match_as_documented() {
        assert!(pattern_matches("0Z.", "030123"));
        assert!(!pattern_matches("0Z.", "0030123"), "Z is 1-9");
        assert!(!pattern_matches("0Z.", "03"), ". needs one or more");
        assert!(pattern_matches("NXXNXXXXXX", "2125551234"));
        assert!(!pattern_matches("NXXNXXXXXX", "1125551234"));
        assert!(!pattern_matches("NXXNXXXXXX", "21255512345"), "too long");
        assert!(pattern_matches("*X#", "*7#"));
        assert!(pattern_matches("+.", "+4930"));
        assert!(!pattern_matches("112", "1122"));
        assert!(!pattern_matches("", "1"));
    }

    #[test]
    fn extensions_own_numbers_and_external_numbers_are_told_apart() {
        let p = plan();
        assert_eq!(p.decide("1000"), Destination::Extension("ext-1000".into()));
        assert_eq!(p.decide("ALICE"), Destination::Extension("ext-1001".into()));
        // Its own numbers, with or without the +.
        assert_eq!(
            p.decide("+493012345678"),
            Destination::OwnNumber {
                number: "+493012345678".into(),
                target: Some(Target::RingGroup("rg-1".into()))
            }
        );
        assert_eq!(
            p.decide("493012345600"),
            Destination::OwnNumber {
                number: "+493012345600".into(),
                target: Some(Target::Extension("ext-1000".into()))
            }
        );
        assert!(matches!(
            p.decide("+493012345699"),
            Destination::OwnNumber { target: None, .. }
        ));
        assert_eq!(p.decide("bob"), Destination::NotFound);
        // As short as an extension number but none of them (another tenant's 2001):
        // it does not exist here, it is not an outbound call.
        assert_eq!(p.decide("2001"), Destination::NotFound);
        // A longer number no route takes: the tenant cannot call there.
        assert_eq!(p.decide("999123"), Destination::NoRoute);
        assert_eq!(
            DialPlan::default().decide("030123456"),
            Destination::NoRoute
        );
    }

    #[test]
    fn outbound_routes_go_by_priority_with_strip_and_prefix() {
        let Destination::External(attempts) = plan().decide("030123456") else {
            panic!("an external number");
        };
        assert_eq!(
            attempts,
            [
                OutboundAttempt {
                    route_id: "r-national".into(),
                    trunk_id: "trunk-a".into(),
                    number: "+4930123456".into()
                },
                OutboundAttempt {
                    route_id: "r-backup".into(),
                    trunk_id: "trunk-b".into(),
                    number: "+4930123456".into()
                },
            ]
        );
        let Destination::External(intl) = plan().decide("0044201234") else {
            panic!("an international number");
        };
        assert_eq!(intl[0].number, "+44201234");
        let Destination::External(e164) = plan().decide("+44201234") else {
            panic!("an E.164 number");
        };
        assert_eq!(
            (e164[0].trunk_id.as_str(), e164[0].number.as_str()),
            ("trunk-a", "+44201234")
        );
    }

    #[test]
    fn emergency_numbers_come_first_even_over_an_extension() {
        let p = plan();
        let Destination::Emergency(attempts) = p.decide("112") else {
            panic!("112 is an emergency number");
        };
        assert_eq!(attempts[0].trunk_id, "trunk-e");
        // No route for 911 here: still an emergency (the engine answers it, never 403).
        assert_eq!(p.decide("911"), Destination::Emergency(Vec::new()));
    }

    #[test]
    fn caller_id_is_always_one_of_the_tenants_own_numbers() {
        let p = plan();
        assert_eq!(caller_id(&p, Some("+493012345678")), Some("+493012345678"));
        // Someone else's number is never presented: the tenant's lowest instead.
        assert_eq!(caller_id(&p, Some("+14155550100")), Some("+493012345600"));
        assert_eq!(caller_id(&p, None), Some("+493012345600"));
        assert_eq!(caller_id(&DialPlan::default(), Some("+14155550100")), None);
    }
}
