package runproto

import (
	"bufio"
	"strings"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	tests := []struct {
		kind Kind
		call uint32
		body string
	}{
		{KindCall, 1, `{"tag":"x"}`}, {KindCancel, 7, ""}, {KindResult, 1 << 31, strings.Repeat("é", 1000)},
	}
	for _, tt := range tests {
		b := AppendHeader(nil, tt.kind, tt.call, len(tt.body))
		b = append(b, tt.body...)
		f, err := ReadFrame(bufio.NewReader(strings.NewReader(string(b))), MaxFrame)
		if err != nil || f.Kind != tt.kind || f.Call != tt.call || string(f.Body) != tt.body {
			t.Errorf("round trip of %s/%d: got %v %d %q, %v", tt.kind, tt.call, f.Kind, f.Call, f.Body, err)
		}
	}
	for name, raw := range map[string][]byte{
		"too short":  {0, 0, 0, 4, 1, 0, 0, 0},
		"too long":   {0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0},
		"cut body":   {0, 0, 0, 9, 11, 0, 0, 0, 1, 'a'},
		"cut header": {0, 0},
	} {
		if _, err := ReadFrame(bufio.NewReader(strings.NewReader(string(raw))), MaxFrame); err == nil {
			t.Errorf("%s: readFrame accepted %v", name, raw)
		}
	}
}

func TestKindNamesAndFinal(t *testing.T) {
	for k, want := range map[Kind]string{KindResume: "RESUME", KindCredit: "CREDIT", KindReady: "READY", Kind(99): "Kind(99)"} {
		if k.String() != want {
			t.Errorf("%d: %s, want %s", k, k, want)
		}
	}
	for _, k := range []Kind{KindResult, KindEnd, KindError, KindPong} {
		if !k.Final() {
			t.Errorf("%s is final", k)
		}
	}
	if KindChunk.Final() || KindLog.Final() {
		t.Error("CHUNK and LOG are not final")
	}
}

func TestReadFrameBound(t *testing.T) {
	b := AppendFrame(nil, KindResult, 1, []byte("0123456789"))
	if _, err := ReadFrame(strings.NewReader(string(b)), 9); err == nil {
		t.Fatal("a 10-byte body read with a bound of 9")
	} else if _, ok := err.(*ProtocolError); !ok {
		t.Fatalf("error %T %v, want a ProtocolError", err, err)
	}
	if f, err := ReadFrame(strings.NewReader(string(b)), 10); err != nil || string(f.Body) != "0123456789" {
		t.Fatalf("%v %v", f, err)
	}
}
