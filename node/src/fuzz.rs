//! Bounded fuzzing on stable (proptest) of what the HTTP API parses from any client: Go
//! durations (`?wait=`, check intervals) and service registration bodies. Each property runs a
//! few thousand cases in the ordinary test run; `PROPTEST_CASES` raises that for a deeper run
//! (see SECURITY.md).

use std::time::Duration;

use meridian_topology::DcState;
use meridian_topology::names::{validate_id, validate_label};
use proptest::prelude::*;
use serde_json::Value;

use crate::duration::{MAX_DURATION, parse_go_duration};
use crate::http::register::{
    CHECK_FIELDS, SERVICE_FIELDS, WEIGHTS_FIELDS, build_registration, decode_service_definition,
};

/// Keys a service definition (and its checks and weights) may carry, and a few more: the
/// spellings clients also use (snake case, lower case), and keys no definition has.
fn keys() -> Vec<&'static str> {
    let more = ["name", "port", "check_id", "tls_skip_verify", "x", ""];
    SERVICE_FIELDS
        .iter()
        .chain(CHECK_FIELDS)
        .chain(WEIGHTS_FIELDS)
        .chain(&more)
        .copied()
        .collect()
}

/// Any JSON value, nested a few levels, with strings and numbers chosen to hit edges: empty,
/// long, control characters, `/`, non-ASCII; zero, negative, past `u16` and `u64`.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop_oneof![
            Just(0i64),
            Just(-1),
            Just(65_535),
            Just(65_536),
            Just(i64::MAX),
            any::<i64>()
        ]
        .prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[a-z0-9./:_-]{0,12}".prop_map(Value::String),
        ".{0,40}".prop_map(Value::String),
        Just(Value::String("x".repeat(300))),
        Just(Value::String("10s".into())),
        Just(Value::String("http://127.0.0.1:1/".into())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((proptest::sample::select(keys()), inner), 0..8).prop_map(
                |kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            ),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(meridian_topology::fuzz_cases(3000)))]

    /// Any text: an error or a duration within Go's range, never a panic.
    #[test]
    fn any_duration_text_parses_or_is_refused(s in "[0-9+.-]{0,30}[a-zµμ]{0,3}[0-9.]{0,10}[a-z]{0,2}|.{0,40}") {
        if let Ok(d) = parse_go_duration(&s) {
            prop_assert!(d <= MAX_DURATION, "{s:?} gave {d:?}");
        }
    }

    /// A duration written as seconds and nanoseconds reads back exactly.
    #[test]
    fn written_durations_read_back(secs in 0u64..9_000_000_000, nanos in 0u32..1_000_000_000) {
        let want = Duration::new(secs, nanos);
        prop_assert_eq!(parse_go_duration(&format!("{secs}s{nanos}ns")), Ok(want));
        let ms = want.as_millis();
        prop_assert_eq!(
            parse_go_duration(&format!("{ms}ms")),
            Ok(Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)))
        );
    }

    /// Any body: refused with a reason, or a registration whose every field passed the checks
    /// that the catalog, DNS and the gateway rely on. Never a panic.
    #[test]
    fn any_registration_body_is_refused_or_valid(
        def in proptest::collection::vec((proptest::sample::select(keys()), json()), 0..10),
        named in any::<bool>(),
        checked in any::<bool>(),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut map: serde_json::Map<String, Value> =
            def.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        if named {
            // Half the cases get past the name check, so the rest of the validation runs.
            map.entry("Name").or_insert_with(|| Value::from("web"));
        }
        if checked {
            // And some of those carry a check that can be valid.
            map.entry("Check").or_insert_with(|| serde_json::json!({"TTL": "10s"}));
        }
        let obj = Value::Object(map);
        let mut body = serde_json::to_vec(&obj).map_err(|e| TestCaseError::fail(e.to_string()))?;
        if truncate && !body.is_empty() {
            body.truncate(cut.index(body.len()));
        }
        let Ok(def) = decode_service_definition(&body) else {
            return Ok(());
        };
        let Ok(reg) = build_registration(def, "node-1", false, &DcState::default()) else {
            return Ok(());
        };
        let i = &reg.instance;
        prop_assert!(validate_label("service name", &i.service).is_ok(), "{i:?}");
        prop_assert!(validate_id("service ID", &i.id).is_ok(), "{i:?}");
        prop_assert!(i.tags.iter().all(|t| validate_id("tag", t).is_ok()), "{i:?}");
        prop_assert!(i.address.is_empty() || !i.address.contains(char::is_whitespace));
        prop_assert!(i.weights.passing > 0, "{i:?}");
        for c in &reg.checks {
            prop_assert_eq!(&c.service_id, &i.id);
            prop_assert!(validate_id("check ID", &c.id).is_ok(), "{c:?}");
        }
    }

    /// Arbitrary bytes as a body: refused or decoded, never a panic.
    #[test]
    fn any_bytes_as_a_registration_body(body in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(def) = decode_service_definition(&body) {
            let _ = build_registration(def, "node-1", true, &DcState::default());
        }
    }
}
