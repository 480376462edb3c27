//! A cancellation signal shared by the run loop and the task that catches Ctrl-C.

use tokio::sync::watch;

/// Sender side: [`Canceller::cancel`] asks every [`Cancel`] clone to stop.
#[derive(Debug)]
pub struct Canceller {
    sender: watch::Sender<bool>,
}

/// Receiver side, cheap to clone.
#[derive(Debug, Clone)]
pub struct Cancel {
    receiver: watch::Receiver<bool>,
}

/// Creates a connected pair.
pub fn channel() -> (Canceller, Cancel) {
    let (sender, receiver) = watch::channel(false);
    (Canceller { sender }, Cancel { receiver })
}

impl Canceller {
    /// Signals cancellation; later calls do nothing.
    pub fn cancel(&self) {
        self.sender.send_replace(true);
    }
}

impl Cancel {
    /// A signal that never fires, for callers that do not cancel.
    pub fn never() -> Cancel {
        let (sender, receiver) = watch::channel(false);
        // The receiver reports "closed" once the sender is gone; `cancelled` treats that as
        // "never", so leaking the sender is not needed.
        drop(sender);
        Cancel { receiver }
    }

    /// Whether cancellation was signalled.
    pub fn is_cancelled(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Completes when cancellation is signalled; never completes if the sender was dropped
    /// without signalling.
    pub async fn cancelled(&self) {
        let mut receiver = self.receiver.clone();
        if receiver.wait_for(|cancelled| *cancelled).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn cancelled_completes_after_cancel() {
        let (canceller, cancel) = channel();
        assert!(!cancel.is_cancelled());
        canceller.cancel();
        assert!(cancel.is_cancelled());
        tokio::time::timeout(Duration::from_secs(1), cancel.cancelled())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn never_does_not_complete() {
        let cancel = Cancel::never();
        let waited = tokio::time::timeout(Duration::from_millis(20), cancel.cancelled()).await;
        assert!(waited.is_err());
    }
}
