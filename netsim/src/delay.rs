//! A FIFO of items held until a delivery time: one per direction, so delay never reorders.

use std::collections::VecDeque;
use std::future::Future;

use tokio::time::Instant;

/// Items waiting for their delivery time, delivered strictly in push order.
pub(crate) struct DelayQueue<T> {
    items: VecDeque<(Instant, T)>,
    capacity: usize,
}

impl<T> DelayQueue<T> {
    /// An empty queue that reports full at `capacity` items.
    pub(crate) fn new(capacity: usize) -> Self {
        Self { items: VecDeque::new(), capacity }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub(crate) fn is_full(&self) -> bool {
        self.items.len() >= self.capacity
    }

    /// Appends `item` due at `at`; it is never delivered before the items ahead of it.
    pub(crate) fn push(&mut self, at: Instant, item: T) {
        self.items.push_back((at, item));
    }

    /// Removes the head item (call once [`Self::due`] resolved).
    pub(crate) fn pop(&mut self) -> Option<T> {
        self.items.pop_front().map(|(_, item)| item)
    }

    /// Resolves when the head item is due; never resolves while the queue is empty.
    pub(crate) fn due(&self) -> impl Future<Output = ()> + use<T> {
        let at = self.items.front().map(|(at, _)| *at);
        async move {
            match at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        }
    }
}
