//! BATCH bodies (docs/protocol.md, "Batches"): a header, then items of
//! opcode and body, read one at a time where they lie; and the batch reply
//! items the engine thread writes, in full or compact.

use super::{field_error, BodyError, Reader};
use crate::protocol::{opcode, Answer};

/// The batch flags of a Batch (and its BatchReply) header.
pub mod batch_flag {
    /// Answer with one byte an item and a full `Answer` only where needed
    /// (docs/protocol.md, "Compact answers").
    pub const COMPACT_ANSWERS: u16 = 1;
    /// Every flag this version knows.
    pub const KNOWN: u16 = COMPACT_ANSWERS;
}

/// Bit 7 of a compact answer's mark: the item's full `Answer` follows.
pub const ANSWER_FOLLOWS: u8 = 0x80;

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
    flags: u16,
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
        let flags = reader.u16()?;
        if requests && flags & !batch_flag::KNOWN != 0 {
            return Err(field_error("batch flags", format!("{flags:#06x}: bits this version does not know")));
        }
        if !requests && flags != 0 {
            return Err(field_error("batch flags", format!("{flags:#06x}: not a reply in full (CompactAnswers)")));
        }
        if count > commands_max {
            return Err(BodyError::BatchTooLarge { count, max: commands_max });
        }
        Ok(BatchItems { reader, next_index: 0, count, flags, requests, finished: false })
    }

    /// How many items the header announces.
    pub fn announced(&self) -> u16 {
        self.count
    }

    /// Whether the batch asks for compact answers.
    pub fn compact_answers(&self) -> bool {
        self.flags & batch_flag::COMPACT_ANSWERS != 0
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

/// Appends a BATCH (or BatchReply) header for `count` items, answered in full.
pub fn put_batch_header(out: &mut Vec<u8>, count: u16) {
    put_batch_header_with(out, count, 0);
}

/// Appends a BATCH (or BatchReply) header for `count` items with `flags` (`batch_flag`).
pub fn put_batch_header_with(out: &mut Vec<u8>, count: u16, flags: u16) {
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
}

/// Whether a compact reply leaves `answer` out: the answer to a RESERVE or
/// CHANGE that is its code with the slot asked for and nothing else, which
/// the client rebuilds from its request.
#[inline(always)]
fn answer_implied(command_opcode: u8, slot_asked: u32, answer: &Answer) -> bool {
    matches!(command_opcode, opcode::RESERVE | opcode::CHANGE)
        && *answer == Answer { code: answer.code, value: slot_asked, ..Answer::default() }
}

/// Writes a compact BatchReply body (docs/protocol.md, "Compact answers"):
/// the header and room for every item's mark at `start`, then one `push` an
/// item in order, each writing its mark in place and its `Answer` after the
/// marks when the mark is not enough.
pub struct CompactAnswerWriter {
    marks_at: usize,
    count: usize,
    next: usize,
}

impl CompactAnswerWriter {
    pub fn start(out: &mut Vec<u8>, count: u16) -> CompactAnswerWriter {
        put_batch_header_with(out, count, batch_flag::COMPACT_ANSWERS);
        let marks_at = out.len();
        out.resize(marks_at + usize::from(count), 0);
        CompactAnswerWriter { marks_at, count: usize::from(count), next: 0 }
    }

    /// The next item's answer: a `command_opcode` item that asked for
    /// `slot_asked` (any value for a command without a slot). Items past the
    /// count announced are dropped (the caller writes one an item).
    #[inline(always)]
    pub fn push(&mut self, out: &mut Vec<u8>, command_opcode: u8, slot_asked: u32, answer: &Answer) {
        if answer_implied(command_opcode, slot_asked, answer) {
            self.push_implied(out, answer.code);
        } else if self.mark(out, answer.code | ANSWER_FOLLOWS) {
            out.extend_from_slice(&answer.to_bytes());
        }
    }

    /// The next item's answer when it is implied (`push` found that out):
    /// the answer to a RESERVE or CHANGE that is `code` with the slot the
    /// item asked for and nothing else. (The server's crowd of OKs takes
    /// `ok_implied`, which writes nothing.)
    #[inline(always)]
    fn push_implied(&mut self, out: &mut [u8], code: u8) {
        debug_assert!(code & ANSWER_FOLLOWS == 0, "a result code is below 128");
        self.mark(out, code);
    }

    /// The next item's answer when it is an implied OK: the marks start as
    /// OK (0, `start`), so this only moves on. The crowd's answer, once a
    /// reservation (callgrind: 13 instructions with the mark written).
    #[inline(always)]
    pub fn ok_implied(&mut self) {
        const _: () = assert!(crate::protocol::code::OK == 0, "`start` fills the marks with OK");
        debug_assert!(self.next < self.count, "more answers than items");
        self.next += 1;
    }

    /// Writes the next item's mark; false (nothing written) past the count
    /// announced, where the mark would land in the answers after the marks.
    #[inline(always)]
    fn mark(&mut self, out: &mut [u8], mark: u8) -> bool {
        debug_assert!(self.next < self.count, "more answers than items");
        if self.next >= self.count {
            return false;
        }
        let Some(place) = out.get_mut(self.marks_at + self.next) else { return false };
        *place = mark;
        self.next += 1;
        true
    }

    /// Checks, in debug builds, that every item got its answer.
    pub fn finish(self) {
        debug_assert_eq!(self.next, self.count, "an item without its answer");
    }
}

/// What a compact answer needs of a batch item to rebuild its `Answer`:
/// its opcode and, for RESERVE and CHANGE, the slot it asks for (0 for
/// others, and for a body that does not read as a booking).
pub fn compact_asked(command_opcode: u8, body: &[u8]) -> (u8, u32) {
    let slot = match command_opcode {
        opcode::RESERVE | opcode::CHANGE => {
            crate::state::BookingRequest::read(body).map_or(0, |booking| booking.slot.0)
        }
        _ => 0,
    };
    (command_opcode, slot)
}

/// A compact BatchReply body, its length checked against its marks (the
/// client's side of `CompactAnswerWriter`).
#[derive(Clone, Copy, Debug)]
pub struct CompactAnswers<'a> {
    marks: &'a [u8],
    answers: &'a [u8],
}

impl<'a> CompactAnswers<'a> {
    pub fn parse(body: &'a [u8]) -> Result<CompactAnswers<'a>, BodyError> {
        let mut reader = Reader::at_least(body, 4)?;
        let count = usize::from(reader.u16()?);
        let flags = reader.u16()?;
        if flags != batch_flag::COMPACT_ANSWERS {
            return Err(field_error("batch flags", format!("{flags:#06x}: not a compact reply")));
        }
        let rest = reader.remaining();
        let Some((marks, answers)) = rest.split_at_checked(count) else {
            return Err(field_error("compact answers", format!("{count} marks announced, {} bytes", rest.len())));
        };
        let following = marks.iter().filter(|mark| **mark & ANSWER_FOLLOWS != 0).count();
        if answers.len() != following * Answer::BYTES {
            let reason =
                format!("{following} answers follow the marks, so {} bytes; {} found", following * 16, answers.len());
            return Err(field_error("compact answers", reason));
        }
        Ok(CompactAnswers { marks, answers })
    }

    /// How many items the reply answers.
    pub fn len(&self) -> usize {
        self.marks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }

    /// Every item's result code, in order.
    pub fn codes(&self) -> impl Iterator<Item = u8> + 'a {
        self.marks.iter().map(|mark| mark & !ANSWER_FOLLOWS)
    }

    /// Every item's whole `Answer`, given what each item asked: its opcode
    /// and, for RESERVE and CHANGE, its slot (0 for others). Refuses a reply
    /// that does not match its batch.
    pub fn answers(&self, asked: impl ExactSizeIterator<Item = (u8, u32)>) -> Result<Vec<Answer>, BodyError> {
        if asked.len() != self.marks.len() {
            let reason = format!("{} answers for {} items", self.marks.len(), asked.len());
            return Err(field_error("compact answers", reason));
        }
        let mut following = self.answers.chunks_exact(Answer::BYTES);
        let mut answers = Vec::with_capacity(self.marks.len());
        for (index, (mark, (command_opcode, slot_asked))) in self.marks.iter().zip(asked).enumerate() {
            let code = mark & !ANSWER_FOLLOWS;
            let answer = if mark & ANSWER_FOLLOWS != 0 {
                // `parse` counted one answer a mark with the bit set.
                let bytes = following.next().unwrap_or_default();
                let (answer, _) = Answer::decode(bytes)?;
                if answer.code != code {
                    let reason = format!("item {index}: mark says code {code}, its answer {}", answer.code);
                    return Err(field_error("compact answers", reason));
                }
                answer
            } else if matches!(command_opcode, opcode::RESERVE | opcode::CHANGE) {
                Answer { code, value: slot_asked, ..Answer::default() }
            } else {
                let reason = format!("item {index}: no answer follows, but it is opcode {command_opcode:#04x}");
                return Err(field_error("compact answers", reason));
            };
            answers.push(answer);
        }
        Ok(answers)
    }
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

    /// A compact reply of `answers` to items asking `asked` (opcode, slot).
    fn compact(asked: &[(u8, u32)], answers: &[Answer]) -> Vec<u8> {
        let mut body = Vec::new();
        let mut writer = CompactAnswerWriter::start(&mut body, asked.len() as u16);
        for ((command_opcode, slot), answer) in asked.iter().zip(answers) {
            writer.push(&mut body, *command_opcode, *slot, answer);
        }
        writer.finish();
        body
    }

    #[test]
    fn compact_answers_leave_out_only_what_the_request_says() {
        use crate::protocol::opcode::{CANCEL, CHANGE, GET_RESERVATION, RESERVE};
        let asked = [(RESERVE, 7), (RESERVE, 7), (CHANGE, 9), (RESERVE, 8), (CANCEL, 0), (GET_RESERVATION, 0)];
        let answers = [
            Answer::ok(7),
            Answer { code: 20, flags: 1, wide: 7439, ..Answer::default() },
            Answer { code: 40, value: 9, ..Answer::default() },
            // OK but another slot than asked: in full.
            Answer::ok(3),
            Answer::ok(7),
            Answer::ok(0),
        ];
        let body = compact(&asked, &answers);
        let marks = [0x00, 0x94, 40, 0x80, 0x80, 0x80];
        assert_eq!(&body[..4 + marks.len()], &[&[6, 0, 1, 0][..], &marks].concat()[..]);
        assert_eq!(body.len(), 4 + 6 + 4 * Answer::BYTES, "four answers follow");
        let parsed = CompactAnswers::parse(&body).unwrap();
        assert_eq!(parsed.codes().collect::<Vec<_>>(), [0, 20, 40, 0, 0, 0]);
        assert_eq!(parsed.answers(asked.iter().copied()).unwrap(), answers);
        // The full reader refuses a compact reply, and the compact one a full reply.
        assert!(split_reply_batch(&body).is_err());
        let mut full = Vec::new();
        put_batch_header(&mut full, 0);
        assert!(CompactAnswers::parse(&full).is_err());
    }

    #[test]
    fn an_answer_pushed_as_implied_is_the_answer_push_leaves_out() {
        let (mut pushed, mut implied) = (Vec::new(), Vec::new());
        let mut writer = CompactAnswerWriter::start(&mut pushed, 2);
        writer.push(&mut pushed, opcode::RESERVE, 7, &Answer::ok(7));
        writer.push(&mut pushed, opcode::CHANGE, 9, &Answer { code: 40, value: 9, ..Answer::default() });
        writer.finish();
        let mut writer = CompactAnswerWriter::start(&mut implied, 2);
        writer.push_implied(&mut implied, 0);
        writer.push_implied(&mut implied, 40);
        writer.finish();
        assert_eq!(pushed, implied);
    }

    #[test]
    fn a_compact_reply_that_does_not_match_its_batch_is_refused() {
        use crate::protocol::opcode::{CANCEL, RESERVE};
        let body = compact(&[(RESERVE, 7), (RESERVE, 8)], &[Answer::ok(7), Answer::ok(1)]);
        let parsed = CompactAnswers::parse(&body).unwrap();
        let refusal = |asked: &[(u8, u32)]| parsed.answers(asked.iter().copied()).unwrap_err().to_string();
        assert!(refusal(&[(RESERVE, 7)]).contains("2 answers for 1 items"));
        assert!(refusal(&[(CANCEL, 7), (RESERVE, 8)]).contains("item 0: no answer follows, but it is opcode 0x11"));
        // One byte more or less than the marks say.
        for cut in [&body[..body.len() - 1], &[&body[..], &[0]].concat()[..], &body[..5]] {
            assert!(CompactAnswers::parse(cut).unwrap_err().to_string().contains("compact answers"));
        }
        // A mark whose code is not its answer's.
        let mut lying = body.clone();
        lying[5] = 0x80 | 40;
        let lying = CompactAnswers::parse(&lying).unwrap().answers([(RESERVE, 7), (RESERVE, 8)].into_iter());
        assert!(lying.unwrap_err().to_string().contains("item 1: mark says code 40, its answer 0"));
        // Unknown request flags are refused; a reply in full must have none.
        let mut request = Vec::new();
        put_batch_header_with(&mut request, 0, 2);
        assert!(split_batch(&request, 4096).unwrap_err().to_string().contains("bits this version does not know"));
        put_batch_header_with(&mut request, 0, 1);
        assert!(BatchItems::of_requests(&request[4..], 4096).unwrap().compact_answers());
    }

    proptest::proptest! {
        /// Any answers to any items come back whole from a compact reply.
        #[test]
        fn compact_answers_come_back_whole(items in proptest::collection::vec(
            (0x10u8..0x14, 0u32..4, 0u8..60, 0u8..3, 0u32..4, proptest::prelude::any::<bool>()), 0..64)) {
            let asked: Vec<(u8, u32)> = items.iter().map(|item| (item.0, item.1)).collect();
            let answers: Vec<Answer> = items
                .iter()
                .map(|&(_, _, code, flags, value, wide)| Answer { code, flags, value, wide: i64::from(wide), ..Answer::default() })
                .collect();
            let body = compact(&asked, &answers);
            let parsed = CompactAnswers::parse(&body);
            proptest::prop_assert!(parsed.is_ok());
            proptest::prop_assert_eq!(parsed.unwrap().answers(asked.iter().copied()).unwrap(), answers);
        }

        /// Any bytes: parsed or refused, never a panic.
        #[test]
        fn any_bytes_parse_or_are_refused(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
                                          compact_flag in proptest::prelude::any::<bool>()) {
            let mut body = body;
            if compact_flag && body.len() >= 4 {
                body[0] %= 8;
                body[1] = 0;
                body[2..4].copy_from_slice(&batch_flag::COMPACT_ANSWERS.to_le_bytes());
            }
            if let Ok(parsed) = CompactAnswers::parse(&body) {
                let asked = (0..parsed.len()).map(|index| (0x10 + (index % 4) as u8, index as u32));
                let _ = parsed.answers(asked);
            }
        }
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
