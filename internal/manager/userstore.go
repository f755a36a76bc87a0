package manager

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/runagent-go/runagent/internal/domain"
)

// UserStore keeps users' persistent folders for the nodes of a cluster
// (cluster.Users): one node at a time holds a user (its lease), and the
// folders' archive is saved after every call that changed them, so that
// the next node to hold the user starts from there.
type UserStore interface {
	// Hold takes the user's lease for this node (counted: each Hold has
	// its Release); lost is closed when another node takes it over. A live
	// node holding it is a *domain.UserElsewhere.
	Hold(ctx context.Context, t domain.Target, key string) (lost <-chan struct{}, err error)
	Release(agentID, key string)
	// Holder is the node holding the user ("" when none does).
	Holder(ctx context.Context, agentID, key string) (string, error)
	// Load writes the user's saved archive to w (found false: none).
	Load(ctx context.Context, agentID, key string, w io.Writer) (found bool, err error)
	Save(ctx context.Context, agentID, key string, r io.Reader) error
	Remove(ctx context.Context, agentID, key string) error
	RemoveAgent(ctx context.Context, agentID string) error
	// AskDelete has node, which holds the user, delete the user's data.
	AskDelete(ctx context.Context, node, agentID, key string) error
}

// folderDigest sums what identifies the content under dir (each regular
// file's path, size, mode and modification time, each directory's path),
// cheaply, so that a call that changed nothing is not saved again; and
// what the files hold, for the quota. The microvm disk is left out.
func folderDigest(dir string) (digest string, bytes int64) {
	h := sha256.New()
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.Name() == mountsDiskName {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case d.IsDir():
			fmt.Fprintf(h, "d %q\n", rel)
		case d.Type().IsRegular():
			bytes += info.Size()
			fmt.Fprintf(h, "f %q %d %o %d\n", rel, info.Size(), info.Mode().Perm(), info.ModTime().UnixNano())
		}
		return nil
	})
	return hex.EncodeToString(h.Sum(nil)), bytes
}

// writeArchive writes dir's directories and regular files as a gzipped
// tar (links and other files are left out: an agent's symlink must not
// make another node read outside the user's folder).
func writeArchive(w io.Writer, dir string) error {
	zw := gzip.NewWriter(w)
	tw := tar.NewWriter(zw)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed as we walked
			}
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." || (!d.IsDir() && !d.Type().IsRegular()) {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		hdr.Uname, hdr.Gname, hdr.Uid, hdr.Gid = "", "", 0, 0
		if d.IsDir() {
			hdr.Name += "/"
			return tw.WriteHeader(hdr)
		}
		f, err := os.Open(p)
		if err != nil {
			return nil // removed as we walked
		}
		defer f.Close()
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		// A file that grows meanwhile is cut at the size written above.
		if _, err := io.CopyN(tw, f, hdr.Size); err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return zw.Close()
}

// readArchive unpacks an archive of writeArchive into dir, which must not
// exist: only directories and regular files, every name inside dir.
func readArchive(r io.Reader, dir string) error {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return fmt.Errorf("the user's archive: %w", err)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	tr := tar.NewReader(zr)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("the user's archive: %w", err)
		}
		name := filepath.FromSlash(strings.TrimSuffix(hdr.Name, "/"))
		if !filepath.IsLocal(name) {
			return fmt.Errorf("the user's archive names %s, outside the folder", strconv.Quote(hdr.Name))
		}
		p := filepath.Join(dir, name)
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return err
			}
			f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, hdr.FileInfo().Mode().Perm()|0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			os.Chtimes(p, hdr.ModTime, hdr.ModTime)
		}
	}
}
