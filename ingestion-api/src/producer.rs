//! A librdkafka producer whose queue is served on the tokio runtime.
//!
//! librdkafka puts delivery reports (and errors) on a queue that the application polls.
//! rdkafka's `ThreadedProducer` polls it from a thread of its own: each report wakes that
//! thread, which then wakes the waiting request's task on a runtime thread, two thread
//! switches a report. Measured on the single-event path (2 cores, wrk at 64 connections), that
//! thread took 2.5 to 2.8 µs of CPU a request, a tenth of the API's. Here librdkafka instead
//! calls [`queue_filled`] when the queue goes from empty to not empty; that wakes
//! [`serve_queue`], a task on the runtime, which polls until the queue is empty, and waking a
//! request's task from there is cheap.
//!
//! This is the one module of the workspace with `unsafe` code: four calls of librdkafka's queue
//! API (taking and releasing a handle on the main queue, counting it, registering the
//! callback), which rdkafka does not wrap.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::sync::{Arc, Weak};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::client::Client;
use rdkafka::config::{ClientConfig, FromClientConfigAndContext};
use rdkafka::error::KafkaError;
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::util::Timeout;
use tokio::sync::Notify;

/// The queue's events handled in one turn of [`serve_queue`] before it lets other tasks run.
const TURN: usize = 1024;

/// A record librdkafka did not take, with why.
pub type Unsent<'a, K, P, C> = (
    KafkaError,
    BaseRecord<'a, K, P, <C as ProducerContext>::DeliveryOpaque>,
);

/// A `BaseProducer` served by a task on the runtime it was created on. Dropping the last
/// reference ends the task.
pub struct ServedProducer<C: ProducerContext + 'static> {
    producer: BaseProducer<C>,
    /// A handle on the producer's main queue, where its reports arrive: to count what is in it.
    queue: *mut rd::rd_kafka_queue_t,
    /// [`queue_filled`]'s argument; lives as long as the registration (see `drop`).
    filled: Arc<Notify>,
}

// SAFETY: librdkafka's queue handles may be used from any thread (every call takes the queue's
// lock); `queue` is released once, in `drop`, when no other reference exists.
unsafe impl<C: ProducerContext + 'static> Send for ServedProducer<C> {}
unsafe impl<C: ProducerContext + 'static> Sync for ServedProducer<C> {}

impl<C: ProducerContext + 'static> std::fmt::Debug for ServedProducer<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedProducer").finish_non_exhaustive()
    }
}

impl<C: ProducerContext + 'static> ServedProducer<C> {
    /// Creates the producer and spawns the task serving its queue. Must be called on a tokio
    /// runtime.
    pub fn create(config: &ClientConfig, context: C) -> Result<Arc<Self>, KafkaError> {
        let producer = BaseProducer::from_config_and_context(config, context)?;
        let filled = Arc::new(Notify::new());
        // SAFETY: the client is alive; the handle is released in `drop`.
        let queue = unsafe { rd::rd_kafka_queue_get_main(producer.client().native_ptr()) };
        // SAFETY: the argument points into `filled`, kept by `Self` until `drop` unregisters
        // the callback.
        unsafe {
            rd::rd_kafka_queue_cb_event_enable(
                queue,
                Some(queue_filled),
                Arc::as_ptr(&filled).cast_mut().cast::<c_void>(),
            );
        }
        let served = Arc::new(Self {
            producer,
            queue,
            filled: Arc::clone(&filled),
        });
        // What arrived before the task starts left a permit in `filled`: nothing is missed.
        tokio::spawn(serve_queue(Arc::downgrade(&served), filled));
        Ok(served)
    }

    /// Hands a record to librdkafka (see `BaseProducer::send`).
    #[allow(clippy::result_large_err)] // rdkafka's own signature: the record comes back
    pub fn send<'a, K, P>(
        &self,
        record: BaseRecord<'a, K, P, C::DeliveryOpaque>,
    ) -> Result<(), Unsent<'a, K, P, C>>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        self.producer.send(record)
    }

    pub fn client(&self) -> &Client<C> {
        self.producer.client()
    }

    /// Waits (blocking) until everything queued is delivered or failed, up to `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(Timeout::After(timeout))
    }

    /// Handles up to `at_most` of the queue's events (delivery reports go to the context);
    /// says whether more are left.
    fn serve(&self, at_most: usize) -> bool {
        for _ in 0..at_most {
            // SAFETY: `queue` is valid until `drop`, which cannot run while `self` is borrowed.
            if unsafe { rd::rd_kafka_queue_length(self.queue) } == 0 {
                return false;
            }
            // Takes one event, without waiting.
            self.producer.poll(Duration::ZERO);
        }
        true
    }
}

impl<C: ProducerContext + 'static> Drop for ServedProducer<C> {
    fn drop(&mut self) {
        // SAFETY: once unregistered, librdkafka no longer calls `queue_filled` with the pointer
        // into `filled`; the handle is released exactly once. The producer (a field) is dropped
        // after this and serves its last reports itself.
        unsafe {
            rd::rd_kafka_queue_cb_event_enable(self.queue, None, std::ptr::null_mut());
            rd::rd_kafka_queue_destroy(self.queue);
        }
        // Lets `serve_queue` find the producer gone and end.
        self.filled.notify_one();
    }
}

/// Called by librdkafka, on one of its threads and under the queue's lock, when the main queue
/// goes from empty to not empty.
unsafe extern "C" fn queue_filled(_rk: *mut rd::rd_kafka_t, filled: *mut c_void) {
    // SAFETY: `filled` is the `Notify` registered in `create`, alive while registered. A
    // notification with no task waiting is kept as a permit, so none is lost.
    unsafe { &*filled.cast::<Notify>() }.notify_one();
}

/// Serves the queue each time it fills, until the producer is gone. A long queue (a large
/// batch's reports) is served in turns, so that other requests go on meanwhile.
async fn serve_queue<C: ProducerContext + 'static>(
    producer: Weak<ServedProducer<C>>,
    filled: Arc<Notify>,
) {
    loop {
        filled.notified().await;
        loop {
            let Some(producer) = producer.upgrade() else {
                return;
            };
            if !producer.serve(TURN) {
                break;
            }
            drop(producer);
            tokio::task::yield_now().await;
        }
    }
}
