//! RESP wire format: request decoding with limits, reply framing, local reply encoding.
//! Knows nothing of sockets: an incomplete frame is "not yet", never an error.

pub mod reply;
pub mod request;

pub use reply::{Frame, FrameError, Scanner};
pub use request::{Decoder, Limits, ProtocolError, Request};
