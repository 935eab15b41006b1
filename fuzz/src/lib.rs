//! Shared pieces of Kiln's fuzz targets: splitting one fuzzer input into
//! the several values a target needs.

/// Reads fuzzer bytes as a sequence of values.
pub struct Input<'a> {
    rest: &'a [u8],
}

impl<'a> Input<'a> {
    /// The whole fuzzer input.
    pub fn new(data: &'a [u8]) -> Self {
        Input { rest: data }
    }

    /// One byte, or 0 when the input is used up.
    pub fn byte(&mut self) -> u8 {
        match self.rest.split_first() {
            Some((b, rest)) => {
                self.rest = rest;
                *b
            }
            None => 0,
        }
    }

    /// A length-prefixed slice (one length byte), shorter if the input ends.
    pub fn slice(&mut self) -> &'a [u8] {
        let n = usize::from(self.byte()).min(self.rest.len());
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        head
    }

    /// A length-prefixed string, lossily decoded.
    pub fn string(&mut self) -> String {
        String::from_utf8_lossy(self.slice()).into_owned()
    }

    /// Whatever is left.
    pub fn rest(self) -> &'a [u8] {
        self.rest
    }
}
