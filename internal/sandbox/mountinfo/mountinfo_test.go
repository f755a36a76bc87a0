package mountinfo

import (
	"reflect"
	"testing"
)

func TestUnder(t *testing.T) {
	info := `22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
80 22 0:5 / /cache/base.tmp/dev rw shared:2 - devtmpfs udev rw
81 22 0:21 / /cache/base.tmp/proc rw - proc proc rw
82 80 0:22 / /cache/base.tmp/dev/pts rw - devpts devpts rw
83 22 0:23 / /cache/base.tmpx/proc rw - proc proc rw
84 22 0:24 / /cache/a\040b/proc rw - proc proc rw
`
	for _, tc := range []struct {
		dir  string
		want []string
	}{
		{"/cache/base.tmp", []string{"/cache/base.tmp/dev", "/cache/base.tmp/dev/pts", "/cache/base.tmp/proc"}},
		{"/cache/a b", []string{"/cache/a b/proc"}},
		{"/elsewhere", nil},
	} {
		t.Run(tc.dir, func(t *testing.T) {
			if got := Under([]byte(info), tc.dir); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		`/plain`:         "/plain",
		`/a\040b`:        "/a b",
		`/tab\011x\012`:  "/tab\tx\n",
		`/back\134slash`: `/back\slash`,
		`/short\04`:      `/short\04`,
		`/not\9999octal`: `/not\9999octal`,
	} {
		if got := Unescape(in); got != want {
			t.Errorf("Unescape(%q) = %q, want %q", in, got, want)
		}
	}
}
