//! A few file descriptors held in reserve, so that the broker can still
//! undo and clean up when the process runs out of them: a create that fails
//! with EMFILE releases the reserve, rolls back (catalog write, directory
//! removal — both need descriptors), then takes the reserve back.

use std::fs::File;
use std::sync::Mutex;

/// Descriptors kept in reserve: enough for a catalog write (temporary file,
/// directory sync) and a recursive directory removal.
const RESERVE: usize = 8;

#[derive(Debug)]
pub(crate) struct SpareFds(Mutex<Vec<File>>);

impl SpareFds {
    pub fn new() -> SpareFds {
        let spare = SpareFds(Mutex::new(Vec::with_capacity(RESERVE)));
        spare.refill();
        spare
    }

    /// Closes the reserve until the guard is dropped.
    pub fn release(&self) -> Released<'_> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
        Released(self)
    }

    fn refill(&self) {
        let mut held = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while held.len() < RESERVE {
            match File::open("/dev/null") {
                Ok(f) => held.push(f),
                // Out of descriptors right now: refilled at the next release.
                Err(_) => break,
            }
        }
    }
}

/// The reserve is closed while this lives.
pub(crate) struct Released<'a>(&'a SpareFds);

impl Drop for Released<'_> {
    fn drop(&mut self) {
        self.0.refill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_closed_while_released_and_taken_back_after() {
        let spare = SpareFds::new();
        assert_eq!(spare.0.lock().unwrap().len(), RESERVE);
        {
            let _released = spare.release();
            assert!(spare.0.lock().unwrap().is_empty());
        }
        assert_eq!(spare.0.lock().unwrap().len(), RESERVE);
    }
}
