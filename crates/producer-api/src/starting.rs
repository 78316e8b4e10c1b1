//! Stream starts in progress, per key: each holds a place under the key's
//! stream quota (`--max-streams-per-key`) from its reservation until its
//! stream is applied (owned now, counted as such) or the start gives up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// `owner` owns and is starting as many streams as the quota allows.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

/// Starts in progress per owner and stream: how many requests are starting
/// it, and the generation of their place, so that a place freed when the
/// stream was applied (and perhaps taken again after a delete) is not
/// released twice.
#[derive(Default)]
pub(crate) struct Starting {
    by_owner: HashMap<Arc<str>, HashMap<String, Place>>,
    next_generation: u64,
}

struct Place {
    starts: usize,
    generation: u64,
}

impl Starting {
    pub(crate) fn count(&self, owner: &str) -> usize {
        self.by_owner.get(owner).map_or(0, HashMap::len)
    }

    /// Joins a start of `stream` already in progress; its generation.
    pub(crate) fn joined(&mut self, owner: &str, stream: &str) -> Option<u64> {
        let place = self.by_owner.get_mut(owner)?.get_mut(stream)?;
        place.starts += 1;
        Some(place.generation)
    }

    pub(crate) fn start(&mut self, owner: &Arc<str>, stream: &str) -> u64 {
        self.next_generation += 1;
        let place = Place { starts: 1, generation: self.next_generation };
        self.by_owner.entry(owner.clone()).or_default().insert(stream.to_owned(), place);
        self.next_generation
    }

    /// `stream` is open now: its owner's starts of it take no place.
    pub(crate) fn applied(&mut self, owner: &str, stream: &str) {
        self.remove(owner, stream);
    }

    /// One start of `stream` is done; its place goes once every start of
    /// the same generation is.
    pub(crate) fn done(&mut self, owner: &str, stream: &str, generation: u64) {
        let Some(place) = self.by_owner.get_mut(owner).and_then(|streams| streams.get_mut(stream)) else { return };
        if place.generation == generation {
            place.starts -= 1;
            if place.starts == 0 {
                self.remove(owner, stream);
            }
        }
    }

    fn remove(&mut self, owner: &str, stream: &str) {
        if let Some(streams) = self.by_owner.get_mut(owner) {
            streams.remove(stream);
            if streams.is_empty() {
                self.by_owner.remove(owner);
            }
        }
    }
}

/// A reserved place under the per-key stream quota; released on drop.
pub struct StartSlot {
    starting: Arc<Mutex<Starting>>,
    owner: Arc<str>,
    stream: String,
    generation: u64,
}

impl StartSlot {
    /// The place of a start of `stream` by `owner`, of `generation`, in
    /// `starting`.
    pub(crate) fn new(starting: Arc<Mutex<Starting>>, owner: Arc<str>, stream: String, generation: u64) -> Self {
        Self { starting, owner, stream, generation }
    }
}

impl Drop for StartSlot {
    fn drop(&mut self) {
        let mut starting = self.starting.lock().expect("registry lock");
        starting.done(&self.owner, &self.stream, self.generation);
    }
}
