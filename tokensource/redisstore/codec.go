package redisstore

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"strconv"
	"time"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// payloadFormat is written into every plain payload; decode refuses other
// values rather than guess.
const payloadFormat = 1

// sealedPrefix starts every sealed payload; a plain payload is a JSON object
// and starts with '{'. The rest of a sealed payload is the nonce followed by
// the GCM ciphertext and tag.
const sealedPrefix = "sealed:v1:"

// aadPrefix, followed by the record's full key name, is the additional data
// of every seal: a sealed payload opens only under the key it was written to.
const aadPrefix = "github.com/tokenrefresh/grpc-tokenrefresh/tokensource/redisstore " + sealedPrefix

type payload struct {
	Format       int       `json:"format"`
	AccessToken  string    `json:"access_token"`
	RefreshToken string    `json:"refresh_token,omitempty"`
	Expiry       time.Time `json:"expiry,omitzero"`
}

// encode returns the payload stored for t: JSON, sealed when the Store has a
// seal key.
func (s *Store) encode(t *tokensource.Token) ([]byte, error) {
	data, err := json.Marshal(payload{
		Format:       payloadFormat,
		AccessToken:  t.AccessToken,
		RefreshToken: t.RefreshToken,
		Expiry:       t.Expiry,
	})
	if err != nil {
		// Only an Expiry outside years 0–9999 gets here; the message
		// names the time, not the token.
		return nil, errors.New("redisstore: encoding the token: its expiry cannot be represented")
	}
	if len(s.opts.seal) == 0 {
		return data, nil
	}
	aead := s.opts.seal[0]
	out := make([]byte, len(sealedPrefix), len(sealedPrefix)+aead.NonceSize()+len(data)+aead.Overhead())
	copy(out, sealedPrefix)
	nonce := out[len(out) : len(out)+aead.NonceSize()]
	_, _ = rand.Read(nonce) // crypto/rand.Read never fails (it crashes the program instead)
	out = out[:len(out)+len(nonce)]
	return aead.Seal(out, nonce, data, s.aad()), nil
}

func (s *Store) aad() []byte { return []byte(aadPrefix + s.recordKey) }

// decode parses a payload read from Redis; errors never quote it.
func (s *Store) decode(raw []byte) (*tokensource.Token, error) {
	sealed := bytes.HasPrefix(raw, []byte(sealedPrefix))
	switch {
	case sealed && len(s.opts.seal) == 0:
		return nil, s.recordErr(ErrSealMismatch, "the record is sealed but the Store has no seal key (WithSealKey)")
	case !sealed && len(s.opts.seal) > 0:
		return nil, s.recordErr(ErrSealMismatch, "the record is not sealed but the Store has a seal key; refusing it (Save a token to replace it)")
	case sealed:
		body := raw[len(sealedPrefix):]
		var plain []byte
		opened := false
		for _, aead := range s.opts.seal {
			if len(body) < aead.NonceSize()+aead.Overhead() {
				return nil, s.recordErr(ErrSealMismatch, "the sealed record is truncated")
			}
			p, err := aead.Open(nil, body[:aead.NonceSize()], body[aead.NonceSize():], s.aad())
			if err == nil {
				plain, opened = p, true
				break
			}
		}
		if !opened {
			return nil, s.recordErr(ErrSealMismatch, "the record does not open with the seal key: sealed with another key, written under another key name, or modified")
		}
		raw = plain
	}
	var p payload
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, s.recordErr(ErrCorruptRecord, describeJSONError(err))
	}
	if p.Format != payloadFormat {
		return nil, s.recordErr(ErrCorruptRecord, "unsupported format "+strconv.Itoa(p.Format)+" (want "+strconv.Itoa(payloadFormat)+")")
	}
	if p.AccessToken == "" && p.RefreshToken == "" {
		return nil, s.recordErr(ErrCorruptRecord, "neither an access token nor a refresh token")
	}
	return &tokensource.Token{AccessToken: p.AccessToken, RefreshToken: p.RefreshToken, Expiry: p.Expiry}, nil
}

func (s *Store) recordErr(kind error, detail string) error {
	return &recordError{kind: kind, key: s.recordKey, detail: detail}
}

// describeJSONError explains a decoding failure without quoting the input:
// encoding/json's messages can contain fragments of the token.
func describeJSONError(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return "invalid JSON at offset " + strconv.FormatInt(syn.Offset, 10)
	case errors.As(err, &typ):
		return "field " + strconv.Quote(typ.Field) + " has the wrong type (want " + typ.Type.String() + ")"
	default:
		return "not a token record (malformed value)"
	}
}
