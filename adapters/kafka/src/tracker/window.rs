//! [`Window`]: a partition's tracked messages in offset order.
//!
//! Messages arrive in increasing offsets, so an arrival is a push at the
//! back and the watermark pops from the front; a lookup by offset is an
//! index (offsets are mostly consecutive), checked, else a binary search
//! (offsets have gaps: transaction markers, compaction). A message
//! forgotten out of order (a lane's) leaves an empty place until the front
//! reaches it. Every operation a message makes is O(1), but the lookup
//! after a gap, O(log n).

use std::collections::VecDeque;

/// See the [module docs](self).
#[derive(Debug)]
pub(super) struct Window<T> {
    places: VecDeque<(i64, Option<T>)>,
    len: usize,
}

impl<T> Default for Window<T> {
    fn default() -> Self {
        Window {
            places: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> Window<T> {
    /// How many values it holds.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `value` at `offset`, which must be past every offset held
    /// (the tracker drops a refetched offset before this); an offset that
    /// is not is ignored (`false`).
    pub(super) fn push(&mut self, offset: i64, value: T) -> bool {
        if self.places.back().is_some_and(|(last, _)| *last >= offset) {
            return false;
        }
        self.places.push_back((offset, Some(value)));
        self.len += 1;
        true
    }

    /// Where `offset` is, if held.
    fn place(&self, offset: i64) -> Option<usize> {
        let (first, _) = self.places.front()?;
        let guess = usize::try_from(offset.checked_sub(*first)?).ok()?;
        if self.places.get(guess).is_some_and(|(at, _)| *at == offset) {
            return Some(guess);
        }
        self.places
            .binary_search_by_key(&offset, |(at, _)| *at)
            .ok()
    }

    pub(super) fn get(&self, offset: i64) -> Option<&T> {
        self.places.get(self.place(offset)?)?.1.as_ref()
    }

    pub(super) fn get_mut(&mut self, offset: i64) -> Option<&mut T> {
        let at = self.place(offset)?;
        self.places.get_mut(at)?.1.as_mut()
    }

    /// Takes the value at `offset` out (its place stays empty until the
    /// front reaches it).
    pub(super) fn remove(&mut self, offset: i64) -> Option<T> {
        let at = self.place(offset)?;
        let value = self.places.get_mut(at)?.1.take()?;
        self.len -= 1;
        self.trim();
        Some(value)
    }

    /// The first value held, with its offset.
    pub(super) fn first(&self) -> Option<(i64, &T)> {
        let (offset, value) = self.places.front()?;
        Some((*offset, value.as_ref()?))
    }

    /// Takes the first value out.
    pub(super) fn pop_first(&mut self) -> Option<(i64, T)> {
        let (offset, value) = self.places.pop_front()?;
        let value = value?;
        self.len -= 1;
        self.trim();
        Some((offset, value))
    }

    /// Drops the empty places at the front, so the front is a value.
    fn trim(&mut self) {
        while self.places.front().is_some_and(|(_, v)| v.is_none()) {
            self.places.pop_front();
        }
        if self.len == 0 {
            self.places.clear();
        }
    }

    /// Every value with its offset, in offset order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (i64, &T)> {
        self.places
            .iter()
            .filter_map(|(offset, v)| Some((*offset, v.as_ref()?)))
    }

    /// Every value with its offset, in offset order, to change.
    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (i64, &mut T)> {
        self.places
            .iter_mut()
            .filter_map(|(offset, v)| Some((*offset, v.as_mut()?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_with_gaps_are_found_and_the_front_pops_in_order() {
        let mut w = Window::default();
        for offset in [3, 4, 5, 9, 10, 20] {
            assert!(w.push(offset, offset * 10));
        }
        assert!(!w.push(20, 0), "not past the last");
        assert!(!w.push(7, 0), "not past the last");
        assert_eq!(w.len(), 6);
        for offset in [3, 4, 5, 9, 10, 20] {
            assert_eq!(w.get(offset), Some(&(offset * 10)), "{offset}");
        }
        for missing in [0, 2, 6, 8, 11, 19, 21, -1, i64::MIN, i64::MAX] {
            assert_eq!(w.get(missing), None, "{missing}");
        }
        *w.get_mut(9).expect("held") += 1;
        assert_eq!(w.first(), Some((3, &30)));
        assert_eq!(w.pop_first(), Some((3, 30)));
        assert_eq!(w.first(), Some((4, &40)));
        assert_eq!(
            w.iter().map(|(o, _)| o).collect::<Vec<_>>(),
            [4, 5, 9, 10, 20]
        );
        assert_eq!(w.get(9), Some(&91));
    }

    #[test]
    fn a_value_taken_out_of_order_leaves_a_place_until_the_front_reaches_it() {
        let mut w = Window::default();
        for offset in 0..5 {
            w.push(offset, offset);
        }
        assert_eq!(w.remove(2), Some(2));
        assert_eq!(w.remove(2), None, "already out");
        assert_eq!(w.len(), 4);
        assert_eq!(w.get(3), Some(&3), "found past the empty place");
        assert_eq!(w.remove(0), Some(0));
        assert_eq!(w.remove(1), Some(1));
        assert_eq!(w.first(), Some((3, &3)), "the empty place was dropped");
        assert_eq!(w.remove(4), Some(4));
        assert_eq!(w.remove(3), Some(3));
        assert!(w.is_empty());
        assert_eq!(w.first(), None);
        assert!(w.push(5, 5), "offsets go on after emptying");
        assert_eq!(
            w.iter_mut().map(|(o, v)| (o, *v)).collect::<Vec<_>>(),
            [(5, 5)]
        );
    }
}
