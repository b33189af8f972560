//! [`Listing`]: the rows of a [`Dlq::list`](super::Dlq::list), kept on
//! disk so a listing of a large DLQ does not grow memory.

use super::Letter;
use super::scratch::Scratch;
use crate::error::CliError;

/// The rows of a [`Dlq::list`](super::Dlq::list), one per selected letter, on disk.
#[derive(Debug)]
pub struct Listing {
    pub(super) rows: Scratch,
}

impl Listing {
    /// A listing of `letters` (with their copy counts) made with `row`.
    pub fn of(
        letters: &[Letter],
        mut row: impl FnMut(&Letter) -> String,
    ) -> Result<Self, CliError> {
        let mut rows = Scratch::new()?;
        for (i, l) in letters.iter().enumerate() {
            let key = i.to_string();
            rows.sight_many(&key, l.copies)?;
            rows.set_row(&key, &row(l))?;
        }
        Ok(Listing { rows })
    }

    /// Calls `visit` with every row and its letter's copy count, in DLQ order.
    pub fn each(
        &self,
        visit: impl FnMut(&str, u32) -> Result<(), CliError>,
    ) -> Result<(), CliError> {
        self.rows.rows(visit)
    }
}
