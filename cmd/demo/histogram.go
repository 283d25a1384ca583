package main

import (
	"encoding/json"
	"fmt"
	"math/bits"
	"time"
)

// histogram counts durations in log-linear buckets: exact below 32 ns, then
// 16 buckets per power of two, so a percentile is within 1/16 (6.25 %) of the
// true value. Its size is fixed (under 8 KiB) however many samples it gets,
// which is why the demo keeps one per worker instead of every sample.
// The zero value is empty and ready to use; it is not safe for concurrent use.
type histogram struct {
	counts [numBuckets]uint64
	n      uint64
	max    time.Duration
}

const (
	exactBelow = 32 // durations under this many nanoseconds get a bucket each
	subBuckets = 16 // buckets per power of two above exactBelow
	numBuckets = exactBelow + (64-5)*subBuckets
)

// bucketOf returns the bucket of v nanoseconds.
func bucketOf(v uint64) int {
	if v < exactBelow {
		return int(v)
	}
	shift := bits.Len64(v) - 5 // keep the top five bits: 1xxxx
	return exactBelow + (shift-1)*subBuckets + int(v>>shift) - subBuckets
}

// bucketRange returns the smallest value of bucket i and its width.
func bucketRange(i int) (lo, width uint64) {
	if i < exactBelow {
		return uint64(i), 1
	}
	i -= exactBelow
	shift := i/subBuckets + 1
	top := uint64(i%subBuckets + subBuckets)
	return top << shift, 1 << shift
}

func (h *histogram) record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.counts[bucketOf(uint64(d))]++
	h.n++
	h.max = max(h.max, d)
}

func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// quantile returns the q-quantile (0 < q <= 1) as the middle of the bucket
// that holds it, capped at the largest sample; 0 without samples.
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n) + 0.5)
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			lo, width := bucketRange(i)
			return min(time.Duration(lo+width/2), h.max)
		}
	}
	return h.max
}

// wireHistogram is a histogram as a fleet worker process sends it: only the
// buckets that have samples.
type wireHistogram struct {
	Counts map[int]uint64 `json:"counts"`
	Max    time.Duration  `json:"max_ns"`
}

func (h histogram) MarshalJSON() ([]byte, error) {
	w := wireHistogram{Counts: map[int]uint64{}, Max: h.max}
	for i, c := range h.counts {
		if c > 0 {
			w.Counts[i] = c
		}
	}
	return json.Marshal(w)
}

func (h *histogram) UnmarshalJSON(b []byte) error {
	var w wireHistogram
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*h = histogram{max: w.Max}
	for i, c := range w.Counts {
		if i < 0 || i >= numBuckets {
			return fmt.Errorf("histogram bucket %d out of range", i)
		}
		h.counts[i] = c
		h.n += c
	}
	return nil
}
