//! The lock-poisoning policy: a panic while a std lock is held never leaves
//! the broker's in-memory state half-changed (every change under these locks
//! is a single assignment or insertion), so a poisoned lock is still used.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

pub(crate) fn read_lock<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn write_lock<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}
