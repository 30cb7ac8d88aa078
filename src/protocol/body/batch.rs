//! BATCH bodies (docs/protocol.md, "Batches"): a header, then items of
//! opcode and body, read one at a time where they lie; and the batch reply
//! items the engine thread writes.

use super::{field_error, BodyError, Reader};
use crate::protocol::Answer;

/// One command of a BATCH, its body not yet decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchItem<'a> {
    pub opcode: u8,
    pub body: &'a [u8],
}

/// Splits a BATCH body into its items; refuses the whole batch if any item
/// cannot be read, if it has more than `commands_max` items, or if an item's
/// opcode may not be batched.
pub fn split_batch(bytes: &[u8], commands_max: u16) -> Result<Vec<BatchItem<'_>>, BodyError> {
    BatchItems::of_requests(bytes, commands_max)?.collect()
}

/// Splits a BatchReply body into its items (the client's side of `split_batch`).
pub fn split_reply_batch(bytes: &[u8]) -> Result<Vec<BatchItem<'_>>, BodyError> {
    BatchItems::of_replies(bytes)?.collect()
}

/// The items of a BATCH (or BatchReply) body, read one at a time where they
/// lie: the server decodes each into a command without a list of items in
/// between. The header is checked when this is made; each item as it is
/// reached; bytes after the last item are the last item's error.
pub struct BatchItems<'a> {
    reader: Reader<'a>,
    next_index: u16,
    count: u16,
    /// Request items: only batchable opcodes.
    requests: bool,
    finished: bool,
}

impl<'a> BatchItems<'a> {
    /// The items of a BATCH request body of at most `commands_max` items.
    pub fn of_requests(bytes: &'a [u8], commands_max: u16) -> Result<BatchItems<'a>, BodyError> {
        BatchItems::new(bytes, commands_max, true)
    }

    /// The items of a BatchReply body.
    pub fn of_replies(bytes: &'a [u8]) -> Result<BatchItems<'a>, BodyError> {
        BatchItems::new(bytes, crate::protocol::BATCH_COMMANDS_MAX, false)
    }

    fn new(bytes: &'a [u8], commands_max: u16, requests: bool) -> Result<BatchItems<'a>, BodyError> {
        let mut reader = Reader::at_least(bytes, 4)?;
        let count = reader.u16()?;
        reader.zeros(2, "batch reserved bytes")?;
        if count > commands_max {
            return Err(BodyError::BatchTooLarge { count, max: commands_max });
        }
        Ok(BatchItems { reader, next_index: 0, count, requests, finished: false })
    }

    /// How many items the header announces.
    pub fn announced(&self) -> u16 {
        self.count
    }

    /// The body of the next item if it is an `opcode` item of exactly `N`
    /// bytes (a fixed-size command, which `opcode` must be), and the item
    /// is taken; else `None` and nothing is taken, for the iterator to read
    /// the item whatever it is. The server's loop over a batch of
    /// reservations: one comparison of the item header instead of the
    /// iterator's general checks and its `Result` (callgrind: about 120
    /// instructions an item before).
    #[inline(always)]
    pub fn next_fixed<const N: usize>(&mut self, opcode: u8) -> Option<&'a [u8; N]> {
        if self.next_index >= self.count {
            return None;
        }
        let (header, after) = self.reader.remaining().split_first_chunk::<4>()?;
        let (body, _) = after.split_first_chunk::<N>()?;
        let length = (N as u16).to_le_bytes();
        if *header != [opcode, 0, length[0], length[1]] {
            return None;
        }
        self.reader.position += 4 + N;
        self.next_index += 1;
        Some(body)
    }

    #[inline]
    fn item(&mut self) -> Result<BatchItem<'a>, BodyError> {
        let rest = self.reader.remaining();
        if let Some((&[opcode, 0, length_low, length_high], after)) = rest.split_first_chunk::<4>() {
            let length = usize::from(u16::from_le_bytes([length_low, length_high]));
            if let Some(body) = after.get(..length) {
                if !self.requests || crate::protocol::opcode::batchable(opcode) {
                    self.reader.position += 4 + length;
                    return Ok(BatchItem { opcode, body });
                }
            }
        }
        Err(bad_item(self.next_index, rest, self.requests))
    }
}

/// Why the item at the front of `rest` cannot be read (cold: kept out of
/// the loop over a good batch).
#[cold]
#[inline(never)]
fn bad_item(index: u16, rest: &[u8], requests: bool) -> BodyError {
    let Some((&[opcode, reserved, length_low, length_high], after)) = rest.split_first_chunk::<4>() else {
        let found = rest.len();
        return field_error("batch item", format!("item {index}: {found} bytes left, 4 needed for its header"));
    };
    if reserved != 0 {
        return field_error("batch item reserved byte", "reserved bytes must be zero".into());
    }
    if requests && !crate::protocol::opcode::batchable(opcode) {
        return field_error("batch item opcode", format!("item {index}: opcode {opcode:#04x} cannot be batched"));
    }
    let length = u16::from_le_bytes([length_low, length_high]);
    field_error("batch item length", format!("item {index} says {length} bytes, {} remain", after.len()))
}

impl<'a> Iterator for BatchItems<'a> {
    type Item = Result<BatchItem<'a>, BodyError>;

    /// Inlined into the server's loop over a batch (callgrind: called, it
    /// cost 65 instructions an item).
    #[inline(always)]
    fn next(&mut self) -> Option<Self::Item> {
        if self.next_index < self.count {
            let item = self.item();
            self.next_index += 1;
            // After an error the rest cannot be read: it is the last answer.
            if item.is_err() {
                self.next_index = self.count;
                self.finished = true;
            }
            return Some(item);
        }
        if self.finished {
            return None;
        }
        self.finished = true;
        let trailing = self.reader.remaining().len();
        (trailing > 0).then(|| Err(bytes_after_the_last_item(trailing)))
    }
}

#[cold]
#[inline(never)]
fn bytes_after_the_last_item(trailing: usize) -> BodyError {
    field_error("batch", format!("{trailing} bytes after the last item"))
}

/// Appends a BATCH (or BatchReply) header for `count` items.
pub fn put_batch_header(out: &mut Vec<u8>, count: u16) {
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
}

/// A batch reply item holding one `Answer`: its 4-byte item header and the answer.
pub const BATCH_ANSWER_ITEM_BYTES: usize = 4 + Answer::BYTES;

/// Appends one batch reply item holding `answer`, in one write (the engine
/// thread's path for every batchable command). The same bytes as
/// `put_batch_item` with `answer.encode` as the body.
#[inline]
pub fn put_batch_answer(out: &mut Vec<u8>, opcode: u8, answer: &Answer) {
    out.extend_from_slice(&batch_answer_item(opcode, answer));
}

/// The bytes of one batch reply item holding `answer` (`put_batch_answer`
/// appends them; the engine thread also writes them into room made for a
/// whole batch of answers).
#[inline]
pub fn batch_answer_item(opcode: u8, answer: &Answer) -> [u8; BATCH_ANSWER_ITEM_BYTES] {
    let mut item = [0; BATCH_ANSWER_ITEM_BYTES];
    item[0] = opcode;
    item[2..4].copy_from_slice(&(Answer::BYTES as u16).to_le_bytes());
    item[4..].copy_from_slice(&answer.to_bytes());
    item
}

/// Appends one batch item, its body written by `write_body`.
pub fn put_batch_item(out: &mut Vec<u8>, opcode: u8, write_body: impl FnOnce(&mut Vec<u8>)) {
    out.extend_from_slice(&[opcode, 0, 0, 0]);
    let start = out.len();
    write_body(out);
    let length = u16::try_from(out.len() - start).expect("batch item bodies are small and fixed-size");
    out[start - 2..start].copy_from_slice(&length.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::super::tests::booking;
    use super::*;
    use crate::protocol::PersonQuery;
    use crate::rules::Channel;
    use crate::state::{BookingRequest, PersonKey};

    #[test]
    fn batches_split_and_refuse_bad_items() {
        let mut body = Vec::new();
        put_batch_header(&mut body, 2);
        put_batch_item(&mut body, crate::protocol::opcode::RESERVE, |out| booking(Channel::Person).encode(out));
        put_batch_item(&mut body, crate::protocol::opcode::GET_RESERVATION, |out| {
            PersonQuery { person: PersonKey(3) }.encode(out)
        });
        let items = split_batch(&body, 4096).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(BookingRequest::decode(items[0].body), Ok(booking(Channel::Person)));
        assert_eq!(PersonQuery::decode(items[1].body), Ok(PersonQuery { person: PersonKey(3) }));
        assert!(split_batch(&body, 1).is_err(), "over the count limit");
        assert!(split_batch(&body[..body.len() - 1], 4096).is_err(), "cut short");
        let mut extra = body.clone();
        extra.push(0);
        assert!(split_batch(&extra, 4096).is_err(), "trailing bytes");
        let mut nested = body.clone();
        nested[4] = crate::protocol::opcode::BATCH;
        assert!(split_batch(&nested, 4096).is_err(), "a batch inside a batch");
    }

    #[test]
    fn a_batch_answer_item_is_the_general_item_with_an_answer_body() {
        let answer = Answer { code: 41, flags: 1, small: 0x0203, value: 0x0405_0607, wide: -5 };
        let (mut fast, mut general) = (Vec::new(), Vec::new());
        put_batch_answer(&mut fast, 0x10, &answer);
        put_batch_item(&mut general, 0x10, |out| answer.encode(out));
        assert_eq!(fast, general);
        assert_eq!(fast.len(), BATCH_ANSWER_ITEM_BYTES);
        assert_eq!(&fast[..4], &[0x10, 0, 16, 0]);
    }
}
