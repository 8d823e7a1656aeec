//! A slab whose keys carry a generation, so a key outliving its entry (a late completion, a
//! cancel racing a reuse, a stale readiness token) never reaches the entry that reused the slot.

pub(crate) struct Slab<T> {
    entries: Vec<Entry<T>>,
    free: Vec<u32>,
    len: usize,
}

struct Entry<T> {
    generation: u32,
    value: Option<T>,
}

/// Keys are `generation << 32 | index`; both halves fit the io_uring user_data and mio tokens.
fn split(key: u64) -> (usize, u32) {
    ((key & 0xffff_ffff) as usize, (key >> 32) as u32)
}

impl<T> Slab<T> {
    pub(crate) fn new() -> Self {
        Slab {
            entries: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn insert(&mut self, value: T) -> u64 {
        self.len += 1;
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.entries.push(Entry {
                    generation: 0,
                    value: None,
                });
                // Bounded by memory long before 2^32 live entries.
                (self.entries.len() - 1) as u32
            }
        };
        let e = &mut self.entries[index as usize];
        e.value = Some(value);
        // Keep the top bits clear so keys never collide with the driver's reserved values.
        (u64::from(e.generation & 0x7fff_ffff) << 32) | u64::from(index)
    }

    pub(crate) fn get(&self, key: u64) -> Option<&T> {
        let (i, generation) = split(key);
        self.entries
            .get(i)
            .filter(|e| e.generation & 0x7fff_ffff == generation)
            .and_then(|e| e.value.as_ref())
    }

    pub(crate) fn remove(&mut self, key: u64) -> Option<T> {
        let (i, generation) = split(key);
        let e = self.entries.get_mut(i)?;
        if e.generation & 0x7fff_ffff != generation {
            return None;
        }
        let value = e.value.take()?;
        e.generation = e.generation.wrapping_add(1);
        self.free.push(i as u32);
        self.len -= 1;
        Some(value)
    }

    /// Keys of every live entry.
    pub(crate) fn keys(&self) -> Vec<u64> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.value.is_some())
            .map(|(i, e)| (u64::from(e.generation & 0x7fff_ffff) << 32) | i as u64)
            .collect()
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().filter_map(|e| e.value.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::Slab;

    #[test]
    fn stale_keys_miss() {
        let mut s = Slab::new();
        let a = s.insert(1);
        assert_eq!(s.remove(a), Some(1));
        let b = s.insert(2);
        assert_ne!(a, b);
        assert_eq!(s.get(a), None);
        assert_eq!(s.remove(a), None);
        assert_eq!(s.get(b), Some(&2));
        assert_eq!(s.len(), 1);
        assert_eq!(s.keys(), vec![b]);
    }
}
