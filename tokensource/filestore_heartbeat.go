package tokensource

import (
	"bytes"
	"encoding/json"
	"errors"
	"hash/crc32"
	"io"
	"os"
	"strconv"
	"time"
)

// A lease holder renews its lease twice every renewal period: in the lock
// file, under the lock (see fileLease.renew), and in the heartbeat file
// beside it, without the lock. The heartbeat is what makes a takeover safe
// against a member stalled inside a critical section: while it holds the
// lock, nobody can renew in the lock file, but the holder's heartbeats go on,
// and the member that resumes sees them before it judges the lease.
//
// The heartbeat file has one fixed-size slot per lease parity: each lease
// granted writes to the other slot than the one before it, so that a holder
// that lost its lease but had not noticed yet cannot overwrite the new
// holder's heartbeat with its own, the one write it may still make.

// heartbeat is the contents of a slot of the heartbeat file.
type heartbeat struct {
	Owner string `json:"owner"`
	// Expires is when the lease ends unless renewed again, in Unix
	// nanoseconds of the wall clock.
	Expires int64 `json:"expires"`
	// Sum is a checksum of Owner and Expires: a slot read in the middle
	// of its write is recognised and read again.
	Sum uint32 `json:"sum"`
}

func heartbeatSum(owner string, expires int64) uint32 {
	return crc32.ChecksumIEEE([]byte(owner + " " + strconv.FormatInt(expires, 10)))
}

// heartbeatSlotSize is the size of a slot of the heartbeat file: JSON
// padded with spaces, replaced whole by one write at its offset.
const heartbeatSlotSize = 128

// writeHeartbeat records in slot that owner's lease lasts until expires. It
// takes no lock: only owner writes slot while its lease is current.
func (f *FileStore) writeHeartbeat(slot int, owner string, expires time.Time) error {
	hb := heartbeat{Owner: owner, Expires: expires.UnixNano()}
	hb.Sum = heartbeatSum(hb.Owner, hb.Expires)
	data, err := json.Marshal(hb)
	if err != nil || len(data) >= heartbeatSlotSize {
		return errors.New("encoding the heartbeat")
	}
	buf := bytes.Repeat([]byte{' '}, heartbeatSlotSize)
	copy(buf, data)
	buf[heartbeatSlotSize-1] = '\n'
	hf, err := os.OpenFile(f.heartbeatPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	_, err = hf.WriteAt(buf, int64(slot)*heartbeatSlotSize)
	if cerr := hf.Close(); err == nil {
		err = cerr
	}
	return err
}

// heartbeatExpiry returns the expiry that the holder of lr's lease last
// wrote to the heartbeat file, or 0 if it has written none (or the file
// cannot be read: the lock file's expiry then decides alone).
func (f *FileStore) heartbeatExpiry(lr leaseRecord) int64 {
	hf, err := os.Open(f.heartbeatPath)
	if err != nil {
		return 0
	}
	defer hf.Close()
	buf := make([]byte, heartbeatSlotSize)
	// A read that meets a write in progress sees part of each; it fails
	// the checksum, and the write, one small pwrite, is over by the next
	// read. A slot that stays unreadable was left so by a crash of the
	// host: it counts as no heartbeat.
	for try := range 3 {
		if try > 0 {
			time.Sleep(time.Duration(try) * 50 * time.Microsecond)
		}
		n, err := hf.ReadAt(buf, int64(lr.Slot)*heartbeatSlotSize)
		if err != nil && !errors.Is(err, io.EOF) {
			return 0
		}
		data := bytes.TrimRight(buf[:n], " \n\x00")
		if len(data) == 0 {
			return 0 // never written
		}
		var hb heartbeat
		if json.Unmarshal(data, &hb) != nil || hb.Sum != heartbeatSum(hb.Owner, hb.Expires) {
			continue
		}
		if hb.Owner != lr.Owner {
			return 0 // an earlier lease's heartbeat
		}
		return hb.Expires
	}
	return 0
}

// live reports whether the lease lr names is live at now: before its expiry
// in the lock file, or before a later one its holder wrote to the heartbeat
// file. Callers read now before lr: a member that stalls between the two
// reads then judges a lease by heartbeats written up to the end of its stall
// against a time before it, which can make an expired lease look live for a
// moment, never a live one expired.
func (f *FileStore) live(lr leaseRecord, now time.Time) bool {
	if lr.Owner == "" {
		return false
	}
	n := now.UnixNano()
	return n < lr.Expires || n < f.heartbeatExpiry(lr)
}
