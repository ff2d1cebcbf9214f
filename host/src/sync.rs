//! The one policy for poisoned locks: a task that panicked while holding a
//! lock never takes the others down with it. Every lock in the crate guards
//! data that is consistent between statements (counters, lists, status
//! records), so the data of a poisoned lock is used as it is. A leaf: it
//! imports nothing of the crate.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// `lock()` under the crate's poison policy.
pub trait Locked<T: ?Sized> {
    /// The guard, whether or not another holder panicked.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> Locked<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `read()` / `write()` under the crate's poison policy.
pub trait ReadWrite<T: ?Sized> {
    /// A read guard, whether or not a writer panicked.
    fn reading(&self) -> RwLockReadGuard<'_, T>;
    /// A write guard, whether or not a writer panicked.
    fn writing(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> ReadWrite<T> for RwLock<T> {
    fn reading(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn writing(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_while_holding_a_lock_leaves_it_usable() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _guard = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *m.locked() += 1;
        assert_eq!(*m.locked(), 2);
    }
}
