package redistest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// lockServer takes an exclusive lock, held until the process exits, on a
// server shared with other test processes (go test runs packages at once).
func lockServer(host string) error {
	sum := sha256.Sum256([]byte(host))
	p := filepath.Join(os.TempDir(), "certmail-redistest-"+hex.EncodeToString(sum[:8])+".lock")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return fmt.Errorf("lock test Redis %s: %w", host, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("lock test Redis %s: %w", host, err)
	}
	lockFile = f // kept open: the lock ends with the process
	return nil
}

var lockFile *os.File
