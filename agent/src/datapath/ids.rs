//! Small id allocators for backend and rev-NAT ids: lowest free id first, so
//! ids stay dense and an adopted state can be extended without collisions.

use std::collections::BTreeSet;

#[derive(Debug)]
pub struct IdAllocator {
    used: BTreeSet<u32>,
    /// Lowest id that may be free.
    next: u32,
    max: u32,
}

impl IdAllocator {
    /// Ids are 1..=max (0 means "none" in the maps).
    pub fn new(max: u32) -> Self {
        Self {
            used: BTreeSet::new(),
            next: 1,
            max,
        }
    }

    pub fn reserve(&mut self, id: u32) {
        self.used.insert(id);
    }

    pub fn alloc(&mut self) -> Option<u32> {
        let mut id = self.next;
        while id <= self.max {
            if self.used.insert(id) {
                self.next = id + 1;
                return Some(id);
            }
            id += 1;
        }
        None
    }

    pub fn release(&mut self, id: u32) {
        if self.used.remove(&id) && id < self.next {
            self.next = id;
        }
    }

    pub fn contains(&self, id: u32) -> bool {
        self.used.contains(&id)
    }

    pub fn len(&self) -> usize {
        self.used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_first_and_reuse() {
        let mut a = IdAllocator::new(3);
        a.reserve(2);
        assert_eq!(a.alloc(), Some(1));
        assert_eq!(a.alloc(), Some(3));
        assert_eq!(a.alloc(), None);
        a.release(2);
        assert_eq!(a.alloc(), Some(2));
        assert_eq!(a.len(), 3);
    }
}
