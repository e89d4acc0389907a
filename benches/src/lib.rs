//! Shared helpers for Strata benches (filled in with the benches).
