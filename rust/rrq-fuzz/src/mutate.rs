//! Byte-level mutations in the style of libFuzzer's, driven by a seeded RNG.

use fastrand::Rng;

/// Textual numbers that tend to sit on boundaries.
const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "1",
    "-1",
    "7",
    "12",
    "23",
    "24",
    "31",
    "32",
    "59",
    "60",
    "61",
    "99",
    "127",
    "128",
    "255",
    "256",
    "1000",
    "65535",
    "65536",
    "2147483647",
    "2147483648",
    "-2147483649",
    "4294967295",
    "4294967296",
    "9007199254740993",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "1e308",
    "1e309",
    "-1e309",
    "5e-324",
    "0.5",
    "nan",
    "inf",
    "-inf",
    "3153600000",
    "3153600001",
];

const INTERESTING_8: &[u8] = &[0, 1, 0x7f, 0x80, 0xff, 0x10, 0x20, 0x40, 0x0a, 0x0d];
const INTERESTING_16: &[u16] = &[0, 0x7fff, 0x8000, 0xffff, 0x0100, 0x00ff, 0x0400, 0x1000];
const INTERESTING_32: &[u32] = &[
    0,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x0100_0000,
    0x0400_0000,
    0x0000_ffff,
    0x0001_0000,
];
const INTERESTING_64: &[u64] = &[
    0,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    0xffff_ffff_ffff_ffff,
    0x0020_0000_0000_0000,
];

/// Mutates inputs in place; never grows one past `max_len`.
#[derive(Debug)]
pub struct Mutator {
    rng: Rng,
    max_len: usize,
}

impl Mutator {
    /// A mutator drawing from `rng`.
    pub fn new(rng: Rng, max_len: usize) -> Self {
        Self { rng, max_len }
    }

    /// The RNG, for callers that pick inputs.
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// Applies a small stack of mutations (1 to 8, mostly few).
    pub fn mutate(&mut self, data: &mut Vec<u8>, pool: &[Vec<u8>], dict: &[&[u8]]) {
        let count = 1 << self.rng.u32(0..4);
        for _ in 0..self.rng.usize(1..=count) {
            self.one(data, pool, dict);
        }
        data.truncate(self.max_len);
    }

    fn pos(&mut self, len: usize) -> usize {
        if len == 0 { 0 } else { self.rng.usize(0..len) }
    }

    /// A range `start..end` inside `0..len`, mostly short.
    fn range(&mut self, len: usize) -> (usize, usize) {
        let start = self.pos(len);
        let max = (len - start).min(if self.rng.u8(..) < 200 { 16 } else { len });
        let n = if max == 0 { 0 } else { self.rng.usize(1..=max) };
        (start, start + n)
    }

    fn one(&mut self, data: &mut Vec<u8>, pool: &[Vec<u8>], dict: &[&[u8]]) {
        let len = data.len();
        match self.rng.u32(0..16) {
            // Flip one bit.
            0 if len > 0 => {
                let i = self.pos(len);
                data[i] ^= 1 << self.rng.u32(0..8);
            }
            // Set a random byte.
            1 if len > 0 => {
                let i = self.pos(len);
                data[i] = self.rng.u8(..);
            }
            // Add or subtract a small number from a byte.
            2 if len > 0 => {
                let i = self.pos(len);
                let d = self.rng.u8(1..=16);
                data[i] = if self.rng.bool() {
                    data[i].wrapping_add(d)
                } else {
                    data[i].wrapping_sub(d)
                };
            }
            // Write an interesting integer, either endianness.
            3 => {
                let le: Vec<u8> = match self.rng.u32(0..4) {
                    0 => vec![INTERESTING_8[self.rng.usize(0..INTERESTING_8.len())]],
                    1 => INTERESTING_16[self.rng.usize(0..INTERESTING_16.len())]
                        .to_le_bytes()
                        .to_vec(),
                    2 => INTERESTING_32[self.rng.usize(0..INTERESTING_32.len())]
                        .to_le_bytes()
                        .to_vec(),
                    _ => INTERESTING_64[self.rng.usize(0..INTERESTING_64.len())]
                        .to_le_bytes()
                        .to_vec(),
                };
                let bytes = self.endian(le);
                self.overwrite(data, &bytes);
            }
            // Insert random bytes.
            4 => {
                let n = self.rng.usize(1..=16);
                let at = self.pos(len + 1);
                let bytes: Vec<u8> = (0..n).map(|_| self.rng.u8(..)).collect();
                data.splice(at..at, bytes);
            }
            // Insert a run of one byte.
            5 => {
                let n = self.rng.usize(1..=64);
                let at = self.pos(len + 1);
                let b = if self.rng.bool() {
                    self.rng.u8(..)
                } else {
                    data.get(self.pos(len)).copied().unwrap_or(0)
                };
                data.splice(at..at, std::iter::repeat_n(b, n));
            }
            // Delete a range.
            6 if len > 0 => {
                let (a, b) = self.range(len);
                data.drain(a..b);
            }
            // Duplicate a range somewhere else.
            7 if len > 0 => {
                let (a, b) = self.range(len);
                let copy = data[a..b].to_vec();
                let at = self.pos(len + 1);
                data.splice(at..at, copy);
            }
            // Overwrite with a chunk of another input.
            8 if !pool.is_empty() => {
                let other = &pool[self.rng.usize(0..pool.len())];
                if !other.is_empty() {
                    let (a, b) = self.range(other.len());
                    let chunk = other[a..b].to_vec();
                    self.overwrite(data, &chunk);
                }
            }
            // Splice: our head, another input's tail.
            9 if !pool.is_empty() => {
                let other = &pool[self.rng.usize(0..pool.len())];
                let cut = self.pos(len + 1);
                let from = self.pos(other.len() + 1);
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            // Insert a dictionary token.
            10 | 11 if !dict.is_empty() => {
                let token = dict[self.rng.usize(0..dict.len())];
                let at = self.pos(len + 1);
                data.splice(at..at, token.iter().copied());
            }
            // Overwrite with a dictionary token.
            12 if !dict.is_empty() => {
                let token = dict[self.rng.usize(0..dict.len())];
                self.overwrite(data, token);
            }
            // Replace a run of ASCII digits with a boundary number.
            13 => self.replace_number(data),
            // Truncate.
            14 if len > 0 => {
                let cut = self.pos(len);
                data.truncate(cut);
            }
            // Swap two bytes.
            _ if len > 1 => {
                let (i, j) = (self.pos(len), self.pos(len));
                data.swap(i, j);
            }
            _ => {
                data.push(self.rng.u8(..));
            }
        }
    }

    fn endian(&mut self, mut v: Vec<u8>) -> Vec<u8> {
        if self.rng.bool() {
            v.reverse();
        }
        v
    }

    fn overwrite(&mut self, data: &mut Vec<u8>, bytes: &[u8]) {
        let at = self.pos(data.len() + 1);
        let end = (at + bytes.len()).min(data.len());
        data.splice(at..end, bytes.iter().copied());
    }

    fn replace_number(&mut self, data: &mut Vec<u8>) {
        let starts: Vec<usize> = (0..data.len())
            .filter(|&i| data[i].is_ascii_digit() && (i == 0 || !data[i - 1].is_ascii_digit()))
            .collect();
        let number = NUMBERS[self.rng.usize(0..NUMBERS.len())].as_bytes();
        if starts.is_empty() {
            let at = self.pos(data.len() + 1);
            data.splice(at..at, number.iter().copied());
            return;
        }
        let start = starts[self.rng.usize(0..starts.len())];
        let end = (start..data.len())
            .find(|&i| !data[i].is_ascii_digit())
            .unwrap_or(data.len());
        data.splice(start..end, number.iter().copied());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_are_reproducible_and_bounded() {
        let run = |seed| {
            let mut m = Mutator::new(Rng::with_seed(seed), 64);
            let pool = vec![b"0 0 * * *".to_vec(), b"[rrq]\nx = 1".to_vec()];
            let mut data = b"*/5 * * * *".to_vec();
            let mut seen = Vec::new();
            for _ in 0..500 {
                m.mutate(&mut data, &pool, &[b"MON", b"L"]);
                assert!(data.len() <= 64);
                seen.push(data.clone());
            }
            seen
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }
}
