//! The bootstrap registry: which objects are served under which names.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use capwire_proto::{Code, Reason, Status};

use crate::object::Object;

/// Names starting with this are the framework's own.
pub const RESERVED_PREFIX: &str = "capwire.";

/// What `serve` does when the name is already served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IfExists {
    /// Fail with `already_exists` / `name_collision` (the default).
    #[default]
    Throw,
    /// Revoke the old object and serve the new one.
    Replace,
    /// Keep the old object; the returned handle is empty and revokes nothing.
    Skip,
}

#[derive(Clone)]
pub(crate) struct Served {
    pub(crate) version: String,
    pub(crate) object: Arc<dyn Object>,
    pub(crate) generation: u64,
}

/// Sessions that must hear about revocations.
pub(crate) trait RevocationSink: Send + Sync {
    fn revoke_generation(&self, generation: u64);
}

#[derive(Default)]
struct Inner {
    entries: Mutex<HashMap<String, Served>>,
    sinks: Mutex<Vec<Weak<dyn RevocationSink>>>,
    next_generation: AtomicU64,
}

/// Named, versioned objects a peer can `bootstrap`. Shared by every
/// connection it is given to; cheap to clone.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("names", &self.names())
            .finish()
    }
}

/// Keeps a name served; dropping it (or calling [`ServeHandle::unserve`])
/// revokes the object on every connection.
#[must_use = "dropping the handle unserves the object"]
#[derive(Debug)]
pub struct ServeHandle {
    registry: Weak<Inner>,
    name: String,
    generation: Option<u64>,
}

impl ServeHandle {
    /// True when this handle serves nothing (`IfExists::Skip` kept the old object).
    pub fn is_empty(&self) -> bool {
        self.generation.is_none()
    }

    /// Unserves now.
    pub fn unserve(mut self) {
        self.revoke();
    }

    /// Keeps the object served for as long as the registry lives.
    pub fn forget(mut self) {
        self.generation = None;
    }

    fn revoke(&mut self) {
        if let (Some(generation), Some(inner)) = (self.generation.take(), self.registry.upgrade()) {
            Registry { inner }.remove_generation(&self.name, generation);
        }
    }
}

impl Drop for ServeHandle {
    fn drop(&mut self) {
        self.revoke();
    }
}

fn check_name(name: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(Status::new(
            Code::InvalidArgument,
            "a served name cannot be empty",
        ));
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err(Status::new(
            Code::InvalidArgument,
            format!("`{name}` uses the reserved `{RESERVED_PREFIX}` prefix"),
        )
        .with_reason(Reason::RESERVED_NAMESPACE));
    }
    Ok(())
}

fn collision(name: &str) -> Status {
    Status::new(Code::AlreadyExists, format!("`{name}` is already served"))
        .with_reason(Reason::NAME_COLLISION)
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Serves `object` as `name` at `version`, failing if the name is taken.
    pub fn serve<O: Object>(
        &self,
        name: &str,
        version: &str,
        object: O,
    ) -> Result<ServeHandle, Status> {
        self.serve_with(name, version, Arc::new(object), IfExists::Throw)
    }

    /// Serves a typed interface's server adapter under the name and version
    /// its `#[interface]` attribute declares.
    pub fn serve_interface<S>(&self, server: S) -> Result<ServeHandle, Status>
    where
        S: crate::typed::Interface + Object,
    {
        self.serve(S::NAME, S::VERSION, server)
    }

    /// Serves `object` with an explicit collision rule.
    pub fn serve_with(
        &self,
        name: &str,
        version: &str,
        object: Arc<dyn Object>,
        if_exists: IfExists,
    ) -> Result<ServeHandle, Status> {
        let mut handles = self.serve_all(
            vec![(name.to_owned(), version.to_owned(), object)],
            if_exists,
        )?;
        Ok(handles.remove(0))
    }

    /// Serves several objects atomically: every name is checked before any
    /// is served, so either all are served or none.
    pub fn serve_all(
        &self,
        objects: Vec<(String, String, Arc<dyn Object>)>,
        if_exists: IfExists,
    ) -> Result<Vec<ServeHandle>, Status> {
        self.serve_checked(objects, if_exists, check_name)
    }

    /// Serves a service of the capwire project itself under a name with
    /// the reserved `capwire.` prefix (such as the broker's
    /// `capwire.broker`). Applications use [`Registry::serve`].
    pub fn serve_framework<O: Object>(
        &self,
        name: &str,
        version: &str,
        object: O,
    ) -> Result<ServeHandle, Status> {
        let objects = vec![(
            name.to_owned(),
            version.to_owned(),
            Arc::new(object) as Arc<dyn Object>,
        )];
        let reserved = |name: &str| {
            if name.starts_with(RESERVED_PREFIX) && name.len() > RESERVED_PREFIX.len() {
                Ok(())
            } else {
                Err(Status::new(
                    Code::InvalidArgument,
                    format!("`{name}` is not a `{RESERVED_PREFIX}` name"),
                ))
            }
        };
        let mut handles = self.serve_checked(objects, IfExists::Throw, reserved)?;
        Ok(handles.remove(0))
    }

    fn serve_checked(
        &self,
        objects: Vec<(String, String, Arc<dyn Object>)>,
        if_exists: IfExists,
        check_name: impl Fn(&str) -> Result<(), Status>,
    ) -> Result<Vec<ServeHandle>, Status> {
        let mut replaced = Vec::new();
        let handles = {
            let mut entries = self.lock();
            for (i, (name, _, _)) in objects.iter().enumerate() {
                check_name(name)?;
                if objects[..i].iter().any(|(n, _, _)| n == name) {
                    return Err(collision(name));
                }
                if if_exists == IfExists::Throw && entries.contains_key(name) {
                    return Err(collision(name));
                }
            }
            let mut handles = Vec::with_capacity(objects.len());
            for (name, version, object) in objects {
                if if_exists == IfExists::Skip && entries.contains_key(&name) {
                    handles.push(self.handle(name, None));
                    continue;
                }
                let generation = self.inner.next_generation.fetch_add(1, Ordering::Relaxed);
                let old = entries.insert(
                    name.clone(),
                    Served {
                        version,
                        object,
                        generation,
                    },
                );
                // Dropped after the lock: an object's `Drop` may use the registry.
                replaced.extend(old);
                handles.push(self.handle(name, Some(generation)));
            }
            handles
        };
        for old in replaced {
            self.notify(old.generation);
        }
        Ok(handles)
    }

    /// Replaces the object served as `name`; the version must be the same.
    /// Connections holding the old object see it revoked.
    pub fn replace<O: Object>(
        &self,
        name: &str,
        version: &str,
        object: O,
    ) -> Result<ServeHandle, Status> {
        check_name(name)?;
        let (handle, old) = {
            // One lock for the check and the swap: a concurrent serve or
            // replace cannot slip a different version in between.
            let mut entries = self.lock();
            match entries.get(name) {
                None => {
                    return Err(Status::new(
                        Code::NotFound,
                        format!("`{name}` is not served"),
                    ))
                }
                Some(s) if s.version != version => {
                    return Err(Status::new(
                        Code::FailedPrecondition,
                        format!("`{name}` is served at version {}, not {version}", s.version),
                    )
                    .with_reason(Reason::VERSION_MISMATCH))
                }
                Some(_) => {}
            }
            let generation = self.inner.next_generation.fetch_add(1, Ordering::Relaxed);
            let old = entries.insert(
                name.to_owned(),
                Served {
                    version: version.to_owned(),
                    object: Arc::new(object),
                    generation,
                },
            );
            (self.handle(name.to_owned(), Some(generation)), old)
        };
        if let Some(old) = old {
            self.notify(old.generation);
        }
        Ok(handle)
    }

    /// Stops serving `name` and revokes it everywhere. Returns whether it was served.
    pub fn unserve(&self, name: &str) -> bool {
        let removed = self.lock().remove(name);
        match removed {
            Some(s) => {
                self.notify(s.generation);
                true
            }
            None => false,
        }
    }

    /// Served names and versions, sorted by name.
    pub fn names(&self) -> Vec<(String, String)> {
        let mut names: Vec<(String, String)> = self
            .lock()
            .iter()
            .map(|(n, s)| (n.clone(), s.version.clone()))
            .collect();
        names.sort();
        names
    }

    /// The capability for served `name` (revoked with it), as a dialect
    /// without bootstrap-by-name hands it out.
    pub(crate) fn main_capability(&self, name: &str) -> Option<crate::Capability> {
        let served = self.lookup(name)?;
        Some(crate::Capability {
            kind: crate::capability::CapKind::Served {
                object: served.object,
                generation: served.generation,
            },
        })
    }

    /// The object served as `name` (no copy of its entry).
    pub(crate) fn object(&self, name: &str) -> Option<Arc<dyn Object>> {
        self.lock().get(name).map(|s| s.object.clone())
    }

    pub(crate) fn lookup(&self, name: &str) -> Option<Served> {
        self.lock().get(name).cloned()
    }

    pub(crate) fn subscribe(&self, sink: Weak<dyn RevocationSink>) {
        let mut sinks = self.inner.sinks.lock().unwrap_or_else(|e| e.into_inner());
        sinks.retain(|s| s.strong_count() > 0);
        sinks.push(sink);
    }

    fn handle(&self, name: String, generation: Option<u64>) -> ServeHandle {
        ServeHandle {
            registry: Arc::downgrade(&self.inner),
            name,
            generation,
        }
    }

    fn remove_generation(&self, name: &str, generation: u64) {
        let removed = {
            let mut entries = self.lock();
            match entries.get(name) {
                Some(s) if s.generation == generation => entries.remove(name),
                _ => None,
            }
        };
        if removed.is_some() {
            self.notify(generation);
        }
    }

    fn notify(&self, generation: u64) {
        let sinks: Vec<_> = {
            let sinks = self.inner.sinks.lock().unwrap_or_else(|e| e.into_inner());
            sinks.iter().filter_map(Weak::upgrade).collect()
        };
        for sink in sinks {
            sink.revoke_generation(generation);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Served>> {
        // A panic while holding this lock cannot leave the map half-updated.
        self.inner.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}
