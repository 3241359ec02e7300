//! Deliberate faults, compiled in only with the `chaos-broken` feature (the `meridian-broken`
//! binary) and switched on by `MERIDIAN_CHAOS_BREAK` (comma-separated names). The chaos tests
//! run their scenarios against them to show that each checker fails when its property is
//! broken. Faults here: `ignore-down` (answers ignore a DC's `Down` status); the catalog's
//! `ack-before-commit` lives in `meridian-catalog`.

/// Whether fault `name` is switched on.
pub(crate) fn active(name: &str) -> bool {
    std::env::var("MERIDIAN_CHAOS_BREAK").is_ok_and(|v| v.split(',').any(|f| f.trim() == name))
}
