//! The peer's method names, interned per connection.

use std::sync::Arc;

/// The method names the peer calls, kept so that each call's context shares
/// one copy instead of making its own. Bounded in count and length: a peer
/// that sends many names, or long ones, gets a copy per call as before.
#[derive(Default)]
pub(crate) struct MethodNames(Vec<Arc<str>>);

/// Names kept per connection, and the longest name kept.
const MAX_METHOD_NAMES: usize = 64;
const MAX_METHOD_NAME_LEN: usize = 64;

impl MethodNames {
    pub(crate) fn intern(&mut self, name: String) -> Arc<str> {
        if let Some(known) = self.0.iter().find(|n| ***n == *name) {
            return known.clone();
        }
        let name: Arc<str> = name.into();
        if self.0.len() < MAX_METHOD_NAMES && name.len() <= MAX_METHOD_NAME_LEN {
            self.0.push(name.clone());
        }
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_are_shared_within_their_bounds() {
        let mut names = MethodNames::default();
        let a = names.intern("echo".to_owned());
        let b = names.intern("echo".to_owned());
        assert!(Arc::ptr_eq(&a, &b), "a known name is shared");
        let long = "x".repeat(MAX_METHOD_NAME_LEN + 1);
        let l1 = names.intern(long.clone());
        let l2 = names.intern(long.clone());
        assert_eq!(&*l1, long.as_str());
        assert!(!Arc::ptr_eq(&l1, &l2), "a long name is not kept");
        for i in 0..2 * MAX_METHOD_NAMES {
            assert_eq!(&*names.intern(format!("m{i}")), format!("m{i}"));
        }
        assert_eq!(names.0.len(), MAX_METHOD_NAMES, "the table stays bounded");
        let c = names.intern("echo".to_owned());
        assert!(Arc::ptr_eq(&a, &c), "names kept first stay kept");
    }
}
