//! The hash the id tables use.
//!
//! Every table of a session (questions, answers, exports, imports) is keyed
//! by a `u64` id, looked up several times per call. SipHash, the standard
//! map's default, is built to resist keys chosen to collide, and costs tens
//! of nanoseconds per lookup on the call path. Here a multiplicative hash
//! (FxHash) does: the ids a peer chooses (its question ids) can at worst pile
//! into one probe sequence of a table whose size the session's limits
//! already bound (`max_in_flight_in`, `max_exports`), so a hostile peer gains
//! a bounded slowdown, not unbounded work.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;

use rustc_hash::FxHasher;

/// A map from ids.
pub(crate) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<FxHasher>>;

/// A set of ids.
pub(crate) type IdSet = HashSet<u64, BuildHasherDefault<FxHasher>>;
