//! [`Channel`]: many-producer, many-consumer message queues shared by every interpreter
//! of the process and by the host.
//!
//! Blocked senders and receivers park their thread (releasing their interpreter's GIL)
//! and are woken by the event they wait for — a message, free space, closing, or an
//! interrupt — never by polling.

pub mod buffer;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::channel::buffer::SharedBuffer;
use crate::error::{Error, Result};
use crate::raw::lent::LentBytes;
use crate::value::Value;
use crate::wait::{self, InterruptReason, InterruptState, Signal, Waiter};

/// One message in a channel.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Message {
    /// Plain data, copied natively.
    Value(Value),
    /// Any other Python object, pickled by the sender; only Python can unpickle it.
    Pickled {
        /// Qualified type name of the object that was pickled.
        type_name: String,
        /// The pickle (protocol 5).
        data: Vec<u8>,
    },
    /// Shared memory, handed over without a copy.
    Buffer(SharedBuffer),
    /// Plain data sent from Python, in the [wire format](crate::value::wire), that a
    /// [`Value`] cannot hold (a `str` with lone surrogates, shared buffers inside a
    /// container). Rust receivers get
    /// [`Message::Value`] for everything else; Python receivers get the objects.
    Encoded(Encoded),
    /// A large `bytes` sent from Python, lent by the sending interpreter until the
    /// receiver has made its own copy: it crosses with one copy, not two. Never given to
    /// Rust receivers, who get [`Message::Value`] holding the bytes.
    #[doc(hidden)]
    Lent(Lent),
}

/// The bytes of a large Python `bytes` object lent by the interpreter that sent it
/// (see [`Message::Lent`]).
#[doc(hidden)]
#[derive(Clone)]
pub struct Lent(pub(crate) LentBytes);

impl std::fmt::Debug for Lent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lent").field("len", &self.0.len()).finish()
    }
}

/// Plain data in the [wire format](crate::value::wire), with the shared buffers it holds
/// (its out-of-band table).
#[derive(Debug, Clone)]
pub struct Encoded {
    bytes: Vec<u8>,
    buffers: Vec<SharedBuffer>,
}

impl Encoded {
    /// Wraps bytes in the wire format (checked when read).
    pub fn from_bytes(bytes: Vec<u8>) -> Encoded {
        Encoded {
            bytes,
            buffers: Vec::new(),
        }
    }

    /// Bytes in the wire format and the shared buffers its `BUFFER` entries name.
    pub fn with_buffers(bytes: Vec<u8>, buffers: Vec<SharedBuffer>) -> Encoded {
        Encoded { bytes, buffers }
    }

    /// The shared buffers the data holds, in the order its entries name them.
    pub fn buffers(&self) -> &[SharedBuffer] {
        &self.buffers
    }

    /// The bytes, in the wire format.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Gives the bytes back.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The data as a [`Value`]; an error for what a `Value` cannot hold.
    pub fn to_value(&self) -> Result<Value> {
        crate::value::wire::decode(&self.bytes)
    }
}

impl Message {
    /// The message as Rust receivers get it: data in the wire format as a
    /// [`Message::Value`] whenever a `Value` can hold it.
    pub(crate) fn for_rust(self) -> Message {
        match self {
            Message::Lent(lent) => Message::Value(Value::Bytes(lent.0.to_vec())),
            Message::Encoded(encoded) => match encoded.to_value() {
                Ok(value) => Message::Value(value),
                Err(_) => Message::Encoded(encoded),
            },
            other => other,
        }
    }
}

impl Message {
    /// The bytes the message carries, as [`Stats`](crate::Stats) counts them: what crosses
    /// for data sent from Python (its wire encoding, a pickle, a shared buffer); for a
    /// [`Value`] sent from Rust, the length of a `bytes` or `str` (0 for other values).
    pub(crate) fn payload_len(&self) -> u64 {
        let len = match self {
            Message::Value(Value::Bytes(data)) => data.len(),
            Message::Value(Value::Str(text)) => text.len(),
            Message::Value(_) => 0,
            Message::Pickled { data, .. } => data.len(),
            Message::Buffer(buffer) => buffer.len(),
            Message::Encoded(encoded) => encoded.as_bytes().len(),
            Message::Lent(lent) => lent.0.len(),
        };
        len as u64
    }

    /// The value, or an error naming what the message holds instead.
    pub fn into_value(self) -> Result<Value> {
        match self {
            Message::Value(v) => Ok(v),
            Message::Pickled { type_name, .. } => Err(Error::Conversion(format!(
                "the message is a pickled {type_name} object, which only Python can unpickle"
            ))),
            Message::Buffer(_) => Err(Error::Conversion(
                "the message is a shared buffer, not a value".into(),
            )),
            Message::Encoded(encoded) => encoded.to_value(),
            Message::Lent(lent) => Ok(Value::Bytes(lent.0.to_vec())),
        }
    }
}

impl From<Value> for Message {
    fn from(v: Value) -> Self {
        Message::Value(v)
    }
}

impl From<SharedBuffer> for Message {
    fn from(b: SharedBuffer) -> Self {
        Message::Buffer(b)
    }
}

/// A channel: a queue of [`Message`]s with optional capacity.
///
/// Handles are cheap to clone and can be shared between threads. Named channels
/// ([`Channel::named`]) are the same channel for the host and for Python code in every
/// interpreter (`subinterp.channel(name)`).
///
/// A named channel lives while it is open or holds messages, and while any handle on it
/// exists (a Rust `Channel` or a Python `subinterp.Channel` in any interpreter). Once it
/// is closed, drained and without handles, it is freed, and its name is free again: a
/// later `Channel::named` with that name makes a new, open channel.
///
/// ```
/// use subinterp::{Channel, Value};
/// let ch = Channel::new(None);
/// ch.send(Value::Int(1))?;
/// assert_eq!(ch.recv_value()?, Value::Int(1));
/// ch.close();
/// assert!(matches!(ch.recv(), Err(subinterp::Error::ChannelClosed)));
/// # Ok::<(), subinterp::Error>(())
/// ```
#[derive(Clone)]
pub struct Channel {
    inner: Arc<Inner>,
}

struct Inner {
    /// Byte buffers of received messages, handed back for senders to reuse (an unbounded
    /// queue, which allocates nothing until used; at most [`SPARE_BUFFERS`] are kept).
    spare: (
        crossbeam_channel::Sender<Vec<u8>>,
        crossbeam_channel::Receiver<Vec<u8>>,
    ),
    name: Option<String>,
    capacity: Option<usize>,
    /// Mirrors `queue.len()` so waiters can spin briefly without taking the lock.
    len: AtomicUsize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Message>,
    closed: bool,
    receivers: Vec<(u64, Waiter)>,
    senders: Vec<(u64, Waiter)>,
    /// For a named channel that is open or holds messages: a handle on itself, which keeps
    /// it alive (and its name taken) without any other handle. Dropped once it is closed
    /// and drained.
    pin: Option<Channel>,
}

/// How many spare byte buffers a channel keeps, and the largest it keeps.
const SPARE_BUFFERS: usize = 256;
const SPARE_MAX_BYTES: usize = 64 * 1024;

static NEXT_WAITER: AtomicU64 = AtomicU64::new(1);
/// The named channels that exist. A channel removes its own entry when it is freed; the
/// lock is never held while a handle is dropped (that could free a channel, which takes
/// it).
static NAMED: Mutex<Option<HashMap<String, Weak<Inner>>>> = Mutex::new(None);

/// How long a receiver spins (without the lock or the GIL) before parking: long enough to
/// catch a reply that is already on its way, short enough not to burn a core.
const SPIN: Duration = Duration::from_micros(20);

/// What a blocking operation ended with, besides success.
#[derive(Debug)]
pub(crate) enum Stop {
    Closed,
    TimedOut,
    Empty,
    Full,
    Interrupted(InterruptReason),
}

impl Stop {
    pub(crate) fn into_error(self) -> Error {
        match self {
            Stop::Closed => Error::ChannelClosed,
            Stop::TimedOut => Error::timeout("timed out"),
            Stop::Empty => Error::ChannelEmpty,
            Stop::Full => Error::ChannelFull,
            Stop::Interrupted(reason) => Error::interrupted(reason),
        }
    }
}

impl Channel {
    /// A new anonymous channel; `capacity` bounds the number of queued messages.
    pub fn new(capacity: Option<usize>) -> Channel {
        Channel::build(None, capacity)
    }

    fn build(name: Option<String>, capacity: Option<usize>) -> Channel {
        Channel {
            inner: Arc::new(Inner {
                spare: crossbeam_channel::unbounded(),
                name,
                capacity,
                len: AtomicUsize::new(0),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// The process-wide channel called `name`, created (unbounded) if no channel of that
    /// name exists: never used, or freed after it was closed, drained and left without
    /// handles.
    pub fn named(name: &str) -> Channel {
        Channel::named_with(name, None).expect("no capacity to conflict with")
    }

    /// The process-wide channel called `name`, created with `capacity` on first use. If it
    /// exists with another capacity, that is an error.
    pub fn named_with(name: &str, capacity: Option<usize>) -> Result<Channel> {
        let mut named = NAMED.lock().unwrap_or_else(|e| e.into_inner());
        let map = named.get_or_insert_with(HashMap::new);
        let existing = map
            .get(name)
            .and_then(Weak::upgrade)
            .map(|inner| Channel { inner });
        let channel = match existing {
            Some(existing) => existing,
            None => {
                let channel = Channel::build(Some(name.to_owned()), capacity);
                channel.lock().pin = Some(channel.clone());
                map.insert(name.to_owned(), Arc::downgrade(&channel.inner));
                channel
            }
        };
        // The handle may be the last one (when another thread just dropped its own): it is
        // dropped, if need be, without the lock, which freeing a channel takes.
        drop(named);
        if capacity.is_some() && capacity != channel.inner.capacity {
            return Err(Error::InvalidArgument(format!(
                "channel {name:?} already exists with capacity {}",
                channel
                    .inner
                    .capacity
                    .map_or("unbounded".to_owned(), |c| c.to_string())
            )));
        }
        Ok(channel)
    }

    /// The name, for named channels.
    pub fn name(&self) -> Option<&str> {
        self.inner.name.as_deref()
    }

    /// The capacity, if bounded.
    pub fn capacity(&self) -> Option<usize> {
        self.inner.capacity
    }

    /// Messages waiting in the queue.
    pub fn len(&self) -> usize {
        self.inner.len.load(Ordering::Acquire)
    }

    /// True if no message is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True once [`close`](Self::close) was called (messages already queued can still be
    /// received).
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// True if both handles are the same channel.
    pub fn same_channel(&self, other: &Channel) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Closes the channel: later sends fail, receivers get the queued messages and then
    /// [`Error::ChannelClosed`]; every blocked sender and receiver wakes.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        let state = &mut *state;
        for (_, w) in state.receivers.drain(..).chain(state.senders.drain(..)) {
            w.wake();
        }
        unpin_if_done(state);
    }

    /// Sends, waiting while the channel is full.
    pub fn send(&self, message: impl Into<Message>) -> Result<()> {
        self.send_with(message.into(), None, None, &mut None)
            .map_err(|(stop, _)| stop.into_error())
    }

    /// Sends, waiting at most `timeout` while the channel is full ([`Error::Timeout`]).
    pub fn send_timeout(&self, message: impl Into<Message>, timeout: Duration) -> Result<()> {
        self.send_with(
            message.into(),
            wait::deadline_after(Some(timeout)),
            None,
            &mut None,
        )
        .map_err(|(stop, _)| stop.into_error())
    }

    /// Sends without waiting ([`Error::ChannelFull`] when full).
    pub fn try_send(&self, message: impl Into<Message>) -> Result<()> {
        self.try_send_message(message.into())
            .map_err(|(stop, _)| stop.into_error())
    }

    /// Sends any `Serialize` value (converted with [`to_value`](crate::to_value)).
    pub fn send_serde<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        self.send(crate::value::to_value(value)?)
    }

    /// Receives, waiting for a message; [`Error::ChannelClosed`] once closed and drained.
    pub fn recv(&self) -> Result<Message> {
        self.recv_with(None, None, &mut None)
            .map(Message::for_rust)
            .map_err(Stop::into_error)
    }

    /// Receives, waiting at most `timeout` ([`Error::Timeout`]).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Message> {
        self.recv_with(wait::deadline_after(Some(timeout)), None, &mut None)
            .map(Message::for_rust)
            .map_err(Stop::into_error)
    }

    /// Receives without waiting ([`Error::ChannelEmpty`] when nothing is queued).
    pub fn try_recv(&self) -> Result<Message> {
        self.try_recv_message()
            .map(Message::for_rust)
            .map_err(Stop::into_error)
    }

    /// Receives a plain value (an error for pickled objects and buffers).
    pub fn recv_value(&self) -> Result<Value> {
        self.recv()?.into_value()
    }

    /// Receives a value and converts it with serde.
    pub fn recv_as<T: DeserializeOwned>(&self) -> Result<T> {
        crate::value::from_value(self.recv_value()?)
    }

    /// A future that resolves to the next message: works with any async runtime (it
    /// registers the task's waker; no thread blocks).
    pub fn recv_async(&self) -> RecvFuture {
        RecvFuture {
            channel: self.clone(),
            id: None,
        }
    }

    /// Iterates over received messages until the channel is closed and drained.
    pub fn iter(&self) -> impl Iterator<Item = Message> + '_ {
        std::iter::from_fn(move || self.recv().ok())
    }

    /// A byte buffer to fill with an outgoing message: one a receiver gave back, or new.
    ///
    /// Reusing buffers keeps a steady stream of byte messages from allocating memory in
    /// the sending thread and freeing it in the receiving one, which makes the two
    /// threads contend for the allocator's locks.
    pub(crate) fn reuse_buffer(&self) -> Vec<u8> {
        self.inner.spare.1.try_recv().unwrap_or_default()
    }

    /// Gives the buffer of a received message back for reuse (small ones only).
    pub(crate) fn recycle_buffer(&self, buffer: Vec<u8>) {
        if buffer.capacity() <= SPARE_MAX_BYTES && self.inner.spare.1.len() < SPARE_BUFFERS {
            let _ = self.inner.spare.0.try_send(buffer);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pop(&self, state: &mut State) -> Option<Message> {
        let message = state.queue.pop_front()?;
        self.inner.len.store(state.queue.len(), Ordering::Release);
        if let Some((_, sender)) = pop_waiter(&mut state.senders) {
            sender.wake();
        }
        unpin_if_done(state);
        Some(message)
    }

    fn push(&self, state: &mut State, message: Message) {
        state.queue.push_back(message);
        self.inner.len.store(state.queue.len(), Ordering::Release);
        if let Some((_, receiver)) = pop_waiter(&mut state.receivers) {
            receiver.wake();
        }
    }

    fn is_full(&self, state: &State) -> bool {
        self.inner
            .capacity
            .is_some_and(|cap| state.queue.len() >= cap)
    }

    pub(crate) fn try_send_message(&self, message: Message) -> Result<(), (Stop, Message)> {
        let mut state = self.lock();
        if state.closed {
            return Err((Stop::Closed, message));
        }
        if self.is_full(&state) {
            return Err((Stop::Full, message));
        }
        self.push(&mut state, message);
        Ok(())
    }

    pub(crate) fn try_recv_message(&self) -> Result<Message, Stop> {
        let mut state = self.lock();
        match self.pop(&mut state) {
            Some(m) => Ok(m),
            None if state.closed => Err(Stop::Closed),
            None => Err(Stop::Empty),
        }
    }

    /// Sends, parking while full, until the deadline or an interrupt of `interrupt`. An
    /// interrupt that arrives as the send succeeds is stored in `late`.
    pub(crate) fn send_with(
        &self,
        message: Message,
        deadline: Option<Instant>,
        interrupt: Option<&InterruptState>,
        late: &mut Option<InterruptReason>,
    ) -> Result<(), (Stop, Message)> {
        let slot = interrupt.map(InterruptState::enter_wait);
        let signal = slot
            .as_ref()
            .map_or_else(Signal::for_current_thread, |s| Arc::clone(s.signal()));
        let id = NEXT_WAITER.fetch_add(1, Ordering::Relaxed);
        let result = loop {
            let mut state = self.lock();
            if state.closed {
                break Err((Stop::Closed, message));
            }
            if !self.is_full(&state) {
                self.push(&mut state, message);
                break Ok(());
            }
            if let Some(reason) = slot.as_ref().and_then(|s| s.take()) {
                break Err((Stop::Interrupted(reason), message));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break Err((Stop::TimedOut, message));
            }
            remember(&mut state.senders, id, Waiter::Thread(Arc::clone(&signal)));
            drop(state);
            signal.wait(deadline);
        };
        let mut state = self.lock();
        state.senders.retain(|(i, _)| *i != id);
        // A wake-up meant for this sender is passed on if there is still room.
        if !self.is_full(&state) {
            if let Some((_, next)) = pop_waiter(&mut state.senders) {
                next.wake();
            }
        }
        drop(state);
        if let (Some(i), Some(slot)) = (interrupt, &slot) {
            *late = i.leave_wait(slot);
        }
        result
    }

    /// Receives, parking while empty, until the deadline or an interrupt of `interrupt`.
    /// An interrupt that arrives as the receive succeeds is stored in `late`.
    pub(crate) fn recv_with(
        &self,
        deadline: Option<Instant>,
        interrupt: Option<&InterruptState>,
        late: &mut Option<InterruptReason>,
    ) -> Result<Message, Stop> {
        if let Ok(m) = self.try_recv_message() {
            return Ok(m);
        }
        self.spin();
        let slot = interrupt.map(InterruptState::enter_wait);
        let signal = slot
            .as_ref()
            .map_or_else(Signal::for_current_thread, |s| Arc::clone(s.signal()));
        let id = NEXT_WAITER.fetch_add(1, Ordering::Relaxed);
        let result = loop {
            let mut state = self.lock();
            if let Some(m) = self.pop(&mut state) {
                break Ok(m);
            }
            if state.closed {
                break Err(Stop::Closed);
            }
            if let Some(reason) = slot.as_ref().and_then(|s| s.take()) {
                break Err(Stop::Interrupted(reason));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break Err(Stop::TimedOut);
            }
            remember(
                &mut state.receivers,
                id,
                Waiter::Thread(Arc::clone(&signal)),
            );
            drop(state);
            signal.wait(deadline);
        };
        self.forget_receiver(id);
        if let (Some(i), Some(slot)) = (interrupt, &slot) {
            *late = i.leave_wait(slot);
        }
        result
    }

    /// Removes a receiver registration; a wake-up it may have consumed without taking a
    /// message is passed on to the next receiver.
    fn forget_receiver(&self, id: u64) {
        let mut state = self.lock();
        state.receivers.retain(|(i, _)| *i != id);
        if !state.queue.is_empty() {
            if let Some((_, next)) = pop_waiter(&mut state.receivers) {
                next.wake();
            }
        }
    }

    fn spin(&self) {
        let start = Instant::now();
        while self.inner.len.load(Ordering::Acquire) == 0 && start.elapsed() < SPIN {
            std::hint::spin_loop();
        }
    }
}

/// Drops a named channel's handle on itself once it is closed and drained: it is freed
/// when the last other handle goes. The caller holds a handle, so this is never the last.
fn unpin_if_done(state: &mut State) {
    if state.closed && state.queue.is_empty() {
        state.pin = None;
    }
}

impl Drop for Inner {
    /// A named channel gives its name back as it is freed (unless a new channel took it
    /// meanwhile: the entry is then no longer this one's).
    fn drop(&mut self) {
        let Some(name) = &self.name else { return };
        let mut named = NAMED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(map) = named.as_mut() {
            if map
                .get(name)
                .is_some_and(|entry| std::ptr::eq(entry.as_ptr(), self))
            {
                map.remove(name);
            }
        }
    }
}

fn remember(list: &mut Vec<(u64, Waiter)>, id: u64, waiter: Waiter) {
    match list.iter_mut().find(|(i, _)| *i == id) {
        Some(entry) => entry.1 = waiter,
        None => list.push((id, waiter)),
    }
}

fn pop_waiter(list: &mut Vec<(u64, Waiter)>) -> Option<(u64, Waiter)> {
    if list.is_empty() {
        None
    } else {
        Some(list.remove(0))
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("name", &self.name())
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .finish()
    }
}

/// Waits for the first message on any of `channels`; returns its index and the message.
///
/// Fails with [`Error::ChannelClosed`] when every channel is closed and drained, and with
/// [`Error::Timeout`] after `timeout`.
pub fn select(channels: &[&Channel], timeout: Option<Duration>) -> Result<(usize, Message)> {
    if channels.is_empty() {
        return Err(Error::InvalidArgument(
            "select needs at least one channel".into(),
        ));
    }
    let deadline = wait::deadline_after(timeout);
    let signal = Signal::for_current_thread();
    let id = NEXT_WAITER.fetch_add(1, Ordering::Relaxed);
    let result = loop {
        let mut all_closed = true;
        let mut found = None;
        for (index, channel) in channels.iter().enumerate() {
            let mut state = channel.lock();
            if let Some(m) = channel.pop(&mut state) {
                found = Some((index, m));
                break;
            }
            all_closed &= state.closed;
            remember(
                &mut state.receivers,
                id,
                Waiter::Thread(Arc::clone(&signal)),
            );
        }
        if let Some((index, message)) = found {
            break Ok((index, message.for_rust()));
        }
        if all_closed {
            break Err(Error::ChannelClosed);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break Err(Error::timeout("timed out"));
        }
        signal.wait(deadline);
    };
    for channel in channels {
        channel.forget_receiver(id);
    }
    result
}

/// The future returned by [`Channel::recv_async`].
pub struct RecvFuture {
    channel: Channel,
    id: Option<u64>,
}

impl Future for RecvFuture {
    type Output = Result<Message>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let channel = self.channel.clone();
        let mut state = channel.lock();
        if let Some(m) = channel.pop(&mut state) {
            drop(state);
            if let Some(id) = self.id.take() {
                channel.forget_receiver(id);
            }
            return Poll::Ready(Ok(m.for_rust()));
        }
        if state.closed {
            return Poll::Ready(Err(Error::ChannelClosed));
        }
        let id = *self
            .id
            .get_or_insert_with(|| NEXT_WAITER.fetch_add(1, Ordering::Relaxed));
        remember(&mut state.receivers, id, Waiter::Task(cx.waker().clone()));
        Poll::Pending
    }
}

impl Drop for RecvFuture {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.channel.forget_receiver(id);
        }
    }
}
