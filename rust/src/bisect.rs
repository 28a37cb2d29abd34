//! Finding the reports the database refuses in a statement it refused:
//! split the rows in halves, write each, and split again what is refused,
//! down to single rows. Free of I/O: the reporter writes the ranges this
//! hands out and says which were refused. k refused rows among n cost about
//! 2k log2(n) statements, and only when a statement was refused.

use std::ops::Range;

#[derive(Debug)]
pub struct Bisection {
    /// Ranges still to write, the next one last.
    todo: Vec<Range<usize>>,
    /// Rows written, in the order they were.
    written: Vec<Range<usize>>,
    /// Single rows refused, with why.
    refused: Vec<(usize, String)>,
}

impl Bisection {
    /// After a statement over rows 0..len was refused for `why`.
    pub fn new(len: usize, why: String) -> Self {
        let mut b = Bisection {
            todo: Vec::new(),
            written: Vec::new(),
            refused: Vec::new(),
        };
        b.refused(0..len, why);
        b
    }

    /// The next range to write, first half first; None when done.
    pub fn next(&mut self) -> Option<Range<usize>> {
        self.todo.pop()
    }

    pub fn written(&mut self, range: Range<usize>) {
        self.written.push(range);
    }

    /// `range` was refused: split it, or if it is one row, that row is bad.
    pub fn refused(&mut self, range: Range<usize>, why: String) {
        match range.len() {
            0 => {}
            1 => self.refused.push((range.start, why)),
            n => {
                let middle = range.start + n / 2;
                self.todo.push(middle..range.end);
                self.todo.push(range.start..middle);
            }
        }
    }

    /// Whether row `i` is written.
    pub fn is_written(&self, i: usize) -> bool {
        self.written.iter().any(|r| r.contains(&i))
    }

    /// The refused rows, in row order, with why.
    pub fn into_refused(self) -> Vec<(usize, String)> {
        let mut refused = self.refused;
        refused.sort_by_key(|(i, _)| *i);
        refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a bisection over `len` rows where `bad` rows are refused; the
    /// refused rows and how many statements it took.
    fn run(len: usize, bad: &[usize]) -> (Vec<usize>, usize) {
        let mut b = Bisection::new(len, "refused".into());
        let mut statements = 0;
        while let Some(range) = b.next() {
            statements += 1;
            if bad.iter().any(|i| range.contains(i)) {
                b.refused(range, format!("row in {statements}"));
            } else {
                b.written(range);
            }
        }
        for i in 0..len {
            assert_eq!(b.is_written(i), !bad.contains(&i), "row {i}");
        }
        (
            b.into_refused().into_iter().map(|(i, _)| i).collect(),
            statements,
        )
    }

    #[test]
    fn finds_the_one_bad_row_in_log_time() {
        for len in [1, 2, 3, 10, 10_000] {
            for bad in [0, len / 2, len - 1] {
                let (refused, statements) = run(len, &[bad]);
                assert_eq!(refused, [bad]);
                let depth = (len as f64).log2().ceil() as usize;
                assert!(
                    statements <= 2 * depth,
                    "{len} rows: {statements} statements"
                );
            }
        }
    }

    #[test]
    fn finds_every_bad_row_and_writes_the_rest() {
        assert_eq!(run(10, &[1, 2, 9]).0, [1, 2, 9]);
        assert_eq!(run(5, &[0, 1, 2, 3, 4]).0, [0, 1, 2, 3, 4]);
        assert_eq!(run(7, &[]).0, Vec::<usize>::new());
    }

    #[test]
    fn a_refused_single_row_is_reported_with_its_reason() {
        let mut b = Bisection::new(1, "bad value".into());
        assert_eq!(b.next(), None);
        assert_eq!(b.into_refused(), [(0, "bad value".to_string())]);
    }

    #[test]
    fn the_first_half_is_written_first() {
        let mut b = Bisection::new(4, "x".into());
        assert_eq!(b.next(), Some(0..2));
        b.refused(0..2, "x".into());
        assert_eq!(b.next(), Some(0..1));
        assert_eq!(b.next(), Some(1..2));
        assert_eq!(b.next(), Some(2..4));
        assert_eq!(b.next(), None);
    }
}
