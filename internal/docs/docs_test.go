package docs

import (
	"bytes"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// outside are the spellings of the reference folder the code once cited,
// which lives beside the repository, not in it. They are built from parts
// so that this file does not contain them.
var outside = []string{".." + "/shared", "shared" + "/docs", "shared" + "/seeds"}

var (
	// docsCite matches a citation of a docs/ page from anywhere, with an
	// optional "§N" or "#anchor"; "x/docs/y.md" is some other folder.
	docsCite = regexp.MustCompile(`(?:^|[^/\w.-])docs/([A-Za-z0-9_-]+\.md)(?:\s*§\s*(\d+)|#([A-Za-z0-9_-]+))?`)
	// relCite matches a page cited by bare name, as pages under docs/ cite
	// each other (prose "PAGE.md §4" or a link "(PAGE.md#1-classes)").
	relCite  = regexp.MustCompile(`(?:^|[^/\w.-])([a-z][a-z0-9_-]*\.md)(?:\s*§\s*(\d+)|#([A-Za-z0-9_-]+))?`)
	heading  = regexp.MustCompile(`(?m)^(#{1,6}) +(.+?)\s*$`)
	numbered = regexp.MustCompile(`^(\d+)\.\s`)
)

// page is what a citation can point at in one docs/ file.
type page struct {
	sections map[string]bool // "3" for "## 3. X-Signature"
	anchors  map[string]bool // GitHub's heading anchors, e.g. "3-x-signature"
}

// slug is GitHub's anchor for a heading: lower case, punctuation other than
// '-' and '_' dropped, spaces turned into '-'.
func slug(h string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(h) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r > 0x7f:
			b.WriteRune(r)
		}
	}
	return b.String()
}

func parsePage(text string) page {
	p := page{sections: map[string]bool{}, anchors: map[string]bool{}}
	for _, m := range heading.FindAllStringSubmatch(text, -1) {
		title := strings.ReplaceAll(m[2], "`", "")
		p.anchors[slug(title)] = true
		if len(m[1]) == 2 {
			if n := numbered.FindStringSubmatch(title); n != nil {
				p.sections[n[1]] = true
			}
		}
	}
	return p
}

// check returns one line per problem in files (paths relative to root,
// slash-separated).
func check(root string, files []string) ([]string, error) {
	texts := map[string]string{}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(f)))
		if err != nil {
			if os.IsNotExist(err) { // tracked but deleted in the work tree
				continue
			}
			return nil, err
		}
		if bytes.IndexByte(b[:min(len(b), 8000)], 0) >= 0 {
			continue // binary
		}
		texts[f] = string(b)
	}
	pages := map[string]page{}
	for f, text := range texts {
		if strings.HasPrefix(f, "docs/") && strings.HasSuffix(f, ".md") {
			pages[strings.TrimPrefix(f, "docs/")] = parsePage(text)
		}
	}
	var problems []string
	resolve := func(at, name, section, anchor string) {
		p, ok := pages[name]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("%s: cites docs/%s, which does not exist", at, name))
		case section != "" && !p.sections[section]:
			problems = append(problems, fmt.Sprintf("%s: cites docs/%s §%s, which has no section %s", at, name, section, section))
		case anchor != "" && !p.anchors[anchor]:
			problems = append(problems, fmt.Sprintf("%s: cites docs/%s#%s, which has no such heading", at, name, anchor))
		}
	}
	for _, f := range slices.Sorted(maps.Keys(texts)) {
		inDocs := path.Dir(f) == "docs"
		for i, line := range strings.Split(texts[f], "\n") {
			at := fmt.Sprintf("%s:%d", f, i+1)
			for _, o := range outside {
				if strings.Contains(line, o) {
					problems = append(problems, fmt.Sprintf("%s: points outside the repository (%q)", at, o))
					break
				}
			}
			for _, m := range docsCite.FindAllStringSubmatch(line, -1) {
				resolve(at, m[1], m[2], m[3])
			}
			for _, m := range relCite.FindAllStringSubmatch(line, -1) {
				name := m[1]
				switch {
				case inDocs:
					resolve(at, name, m[2], m[3])
				case isPage(pages, name) || m[2] != "":
					// A docs/ page (or any page with a section) cited
					// by bare name from outside docs/ names nothing a
					// reader can find from there.
					problems = append(problems, fmt.Sprintf("%s: cites %s without its folder; write docs/%s", at, name, name))
				}
			}
		}
	}
	return problems, nil
}

func isPage(pages map[string]page, name string) bool {
	_, ok := pages[name]
	return ok
}

// moduleRoot is the directory holding go.mod, above the test's directory.
func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	require.NoError(t, err)
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		require.NotEqual(t, dir, parent, "go.mod not found above the test directory")
		dir = parent
	}
}

// repoFiles lists the tracked files, or, where git or its metadata is
// missing (an exported tree, a container build), every file under root.
func repoFiles(t *testing.T, root string) []string {
	t.Helper()
	cmd := exec.Command("git", "ls-files", "-z")
	cmd.Dir = root
	if out, err := cmd.Output(); err == nil {
		var files []string
		for _, f := range strings.Split(string(out), "\x00") {
			if f != "" {
				files = append(files, f)
			}
		}
		return files
	}
	var files []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "artifacts") {
			return filepath.SkipDir
		}
		if d.Type().IsRegular() {
			rel, err := filepath.Rel(root, p)
			if err != nil {
				return err
			}
			files = append(files, filepath.ToSlash(rel))
		}
		return nil
	})
	require.NoError(t, err)
	return files
}

// TestRepositoryCitesOnlyItself: no tracked file points outside the
// repository, and every citation of a docs/ page names an existing page,
// section and anchor.
func TestRepositoryCitesOnlyItself(t *testing.T) {
	t.Parallel()
	root := moduleRoot(t)
	// This file is left out: its fixtures are bad citations on purpose.
	files := slices.DeleteFunc(repoFiles(t, root), func(f string) bool { return f == "internal/docs/docs_test.go" })
	require.Contains(t, files, "docs/opensrs.md", "the file list must cover docs/")
	require.Contains(t, files, "internal/providers/opensrs/opensrs.go", "the file list must cover the Go sources")
	problems, err := check(root, files)
	require.NoError(t, err)
	require.Empty(t, problems)
}

// TestCheckFindsBadCitations: the checker reports each kind of bad
// citation, and accepts good ones.
func TestCheckFindsBadCitations(t *testing.T) {
	t.Parallel()
	page := "# Title\n\n## 1. Endpoints\n\ntext\n\n## 3. X-Signature\n\n### Test vector\n"
	tests := []struct {
		name    string
		file    string
		content string
		want    string // substring of the one problem; "" for none
	}{
		{"SharedFolder", "internal/a/a.go", "// see ../" + "shared/docs/x.md\n", "points outside the repository"},
		{"SharedDocsPath", "README.md", "See /work/shared" + "/docs.\n", "points outside the repository"},
		{"BareName", "internal/a/a.go", "// Endpoints (page" + ".md §1).\n", "without its folder"},
		{"MissingPage", "internal/a/a.go", "// (docs/nothing.md §1)\n", "does not exist"},
		{"MissingSection", "internal/a/a.go", "// (docs/page.md §2)\n", "no section 2"},
		{"MissingAnchor", "README.md", "[x](docs/page.md#2-nothing)\n", "no such heading"},
		{"MissingRelativeInDocs", "docs/other.md", "see page.md §9\n", "no section 9"},
		{"GoodSection", "internal/a/a.go", "// (docs/page.md §3)\n", ""},
		{"GoodAnchor", "README.md", "[x](docs/page.md#3-x-signature) [y](docs/page.md#test-vector)\n", ""},
		{"GoodRelativeInDocs", "docs/other.md", "see [page.md §1](page.md#1-endpoints)\n", ""},
		{"OtherMarkdownUntouched", "internal/a/a.go", "// README.md and CHANGELOG.md are fine\n", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			write := func(name, content string) {
				p := filepath.Join(root, filepath.FromSlash(name))
				require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
				require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
			}
			write("docs/page.md", page)
			write(tc.file, tc.content)
			problems, err := check(root, []string{"docs/page.md", tc.file})
			require.NoError(t, err)
			if tc.want == "" {
				require.Empty(t, problems)
				return
			}
			require.Len(t, problems, 1, "%v", problems)
			require.Contains(t, problems[0], tc.want)
		})
	}
}
