//! Handles: what a host holds instead of a pointer. A handle is an index into a table
//! plus the slot's generation, packed into one machine word, so a freed, stale or
//! made-up handle is looked up and refused rather than dereferenced: no host mistake
//! with a handle is undefined behaviour. (A stale handle whose slot was reused exactly
//! 2^(word bits / 2) frees later aliases the new object: the one case not detected.)

use std::sync::{Arc, Mutex, MutexGuard};

/// Bits of a handle that hold the slot index (plus one, so no handle is 0); the rest
/// hold the generation.
const INDEX_BITS: u32 = usize::BITS / 2;
const INDEX_MASK: usize = (1 << INDEX_BITS) - 1;

/// A table of shared objects addressed by handles.
pub struct Registry<T> {
    inner: Mutex<Slots<T>>,
}

struct Slots<T> {
    /// Per slot: its generation and the object, if live.
    slots: Vec<(usize, Option<Arc<T>>)>,
    /// Indices of empty slots.
    free: Vec<usize>,
}

impl<T> Registry<T> {
    /// An empty table.
    pub const fn new() -> Self {
        Self {
            inner: Mutex::new(Slots {
                slots: Vec::new(),
                free: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slots<T>> {
        // The table is consistent after every statement, so a panic elsewhere while it
        // was held leaves nothing half-done.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `value`; returns its handle (never 0), or `None` when every index is taken.
    pub fn insert(&self, value: T) -> Option<usize> {
        let mut s = self.lock();
        let index = match s.free.pop() {
            Some(i) => i,
            None if s.slots.len() < INDEX_MASK => {
                s.slots.push((0, None));
                s.slots.len() - 1
            }
            None => return None,
        };
        let slot = &mut s.slots[index];
        slot.1 = Some(Arc::new(value));
        Some(pack(index, slot.0))
    }

    /// The object of `handle`, if it is live.
    pub fn get(&self, handle: usize) -> Option<Arc<T>> {
        let (index, generation) = unpack(handle)?;
        let s = self.lock();
        match s.slots.get(index) {
            Some((g, Some(v))) if *g == generation => Some(Arc::clone(v)),
            _ => None,
        }
    }

    /// Takes the object of `handle` out of the table (the handle is dead from now on);
    /// `None` if it was not live.
    pub fn remove(&self, handle: usize) -> Option<Arc<T>> {
        let (index, generation) = unpack(handle)?;
        let mut s = self.lock();
        let slot = s.slots.get_mut(index)?;
        if slot.0 != generation || slot.1.is_none() {
            return None;
        }
        let value = slot.1.take();
        slot.0 = (slot.0 + 1) & (usize::MAX >> INDEX_BITS);
        s.free.push(index);
        value
    }
}

impl<T> Default for Registry<T> {
    fn default() -> Self {
        Self::new()
    }
}

fn pack(index: usize, generation: usize) -> usize {
    (generation << INDEX_BITS) | (index + 1)
}

fn unpack(handle: usize) -> Option<(usize, usize)> {
    let index = (handle & INDEX_MASK).checked_sub(1)?;
    Some((index, handle >> INDEX_BITS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_and_made_up_handles_are_refused() {
        let r = Registry::new();
        let a = r.insert("a").unwrap();
        assert_ne!(a, 0);
        assert_eq!(*r.get(a).unwrap(), "a");
        assert!(r.get(0).is_none());
        assert!(r.get(a + 1).is_none());
        assert!(r.get(usize::MAX).is_none());
        assert_eq!(*r.remove(a).unwrap(), "a");
        assert!(r.get(a).is_none());
        assert!(r.remove(a).is_none());
        // The slot is reused with a new generation: the old handle stays dead.
        let b = r.insert("b").unwrap();
        assert_ne!(a, b);
        assert_eq!(a & INDEX_MASK, b & INDEX_MASK);
        assert!(r.get(a).is_none());
        assert_eq!(*r.get(b).unwrap(), "b");
    }
}
