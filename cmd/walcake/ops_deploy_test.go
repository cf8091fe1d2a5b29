package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// repoRoot is the repository's top directory (tests run in cmd/walcake).
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("no go.mod in %s: %v", root, err)
	}
	return root
}

// knownEnv is every environment variable walcake reads: its flags' and the
// AWS SDK's own.
func knownEnv() map[string]bool {
	env := map[string]bool{"PGPASSWORD": true, "PGSSLROOTCERT": true, "AWS_PROFILE": true, "AWS_ROLE_ARN": true, "AWS_WEB_IDENTITY_TOKEN_FILE": true}
	app := newAppWith(newProcessIO(io.Discard, io.Discard))
	for _, f := range app.Flags {
		if ev, ok := f.(interface{ GetEnvVars() []string }); ok {
			for _, v := range ev.GetEnvVars() {
				env[v] = true
			}
		}
	}
	for _, c := range app.Commands {
		for _, f := range c.Flags {
			if ev, ok := f.(interface{ GetEnvVars() []string }); ok {
				for _, v := range ev.GetEnvVars() {
					env[v] = true
				}
			}
		}
	}
	return env
}

func checkEnvNames(t *testing.T, where string, names []string) {
	t.Helper()
	known := knownEnv()
	for _, n := range names {
		if !known[n] {
			t.Errorf("%s: environment variable %s is not one walcake reads", where, n)
		}
	}
	for _, must := range []string{"PG_CONN_STRING", "WALCAKE_DEST", "SPOOL_DIR"} {
		found := false
		for _, n := range names {
			found = found || n == must
		}
		if !found {
			t.Errorf("%s: does not set %s", where, must)
		}
	}
}

// cronField matches one field of a cron schedule: *, numbers, ranges,
// lists and steps.
var cronField = regexp.MustCompile(`^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$`)

func checkCronSchedule(t *testing.T, where, schedule string) {
	t.Helper()
	fields := strings.Fields(schedule)
	if len(fields) != 5 {
		t.Errorf("%s: schedule %q has %d fields, want 5", where, schedule, len(fields))
		return
	}
	for _, f := range fields {
		if !cronField.MatchString(f) {
			t.Errorf("%s: schedule field %q", where, f)
		}
	}
}

func TestDeployManifests(t *testing.T) {
	root := repoRoot(t)
	dir := filepath.Join(root, "docs", "deploy")

	t.Run("ecs", func(t *testing.T) {
		var td struct {
			Family                  string   `json:"family"`
			RequiresCompatibilities []string `json:"requiresCompatibilities"`
			NetworkMode             string   `json:"networkMode"`
			CPU, Memory             string
			TaskRoleArn             string `json:"taskRoleArn"`
			ExecutionRoleArn        string `json:"executionRoleArn"`
			Containers              []struct {
				Name        string   `json:"name"`
				Image       string   `json:"image"`
				Essential   bool     `json:"essential"`
				Command     []string `json:"command"`
				StopTimeout int      `json:"stopTimeout"`
				Environment []struct {
					Name, Value string
				} `json:"environment"`
				Secrets []struct {
					Name      string `json:"name"`
					ValueFrom string `json:"valueFrom"`
				} `json:"secrets"`
				LogConfiguration struct {
					LogDriver string `json:"logDriver"`
				} `json:"logConfiguration"`
			} `json:"containerDefinitions"`
		}
		decodeJSONStrict(t, filepath.Join(dir, "ecs-task-definition.json"), &td)
		if td.Family != "walcake" || len(td.RequiresCompatibilities) != 1 || td.RequiresCompatibilities[0] != "FARGATE" ||
			td.NetworkMode != "awsvpc" || td.TaskRoleArn == "" || td.ExecutionRoleArn == "" || len(td.Containers) != 1 {
			t.Fatalf("task definition: %+v", td)
		}
		c := td.Containers[0]
		if c.Image == "" || !c.Essential || len(c.Command) == 0 || c.Command[0] != "run" || c.LogConfiguration.LogDriver == "" {
			t.Errorf("container: %+v", c)
		}
		if c.StopTimeout < 25 || c.StopTimeout > 120 {
			t.Errorf("stopTimeout %d: want 25 to 120 s, above the 20 s shutdown bound", c.StopTimeout)
		}
		var names []string
		env := map[string]string{}
		for _, e := range c.Environment {
			names = append(names, e.Name)
			env[e.Name] = e.Value
		}
		for _, s := range c.Secrets {
			names = append(names, s.Name)
			if !strings.HasPrefix(s.ValueFrom, "arn:aws:secretsmanager:") && !strings.HasPrefix(s.ValueFrom, "arn:aws:ssm:") {
				t.Errorf("secret %s from %q", s.Name, s.ValueFrom)
			}
			if s.Name == "PG_CONN_STRING" {
				env[s.Name] = "(secret)"
			}
		}
		checkEnvNames(t, "ECS task definition", names)
		if env["PG_CONN_STRING"] != "(secret)" {
			t.Error("PG_CONN_STRING is not taken from a secret")
		}
		checkArgs(t, "ECS task definition", c.Command)
	})

	t.Run("eventbridge", func(t *testing.T) {
		var s struct {
			Name               string
			ScheduleExpression string
			FlexibleTimeWindow struct{ Mode string }
			State              string
			Target             struct {
				Arn           string
				RoleArn       string
				EcsParameters struct {
					TaskDefinitionArn string
					LaunchType        string
					TaskCount         int
				}
				RetryPolicy struct{ MaximumRetryAttempts int }
			}
		}
		decodeJSON(t, filepath.Join(dir, "eventbridge-schedule.json"), &s)
		if !regexp.MustCompile(`^(rate\(\d+ (minute|minutes|hour|hours)\)|cron\(.+\))$`).MatchString(s.ScheduleExpression) {
			t.Errorf("ScheduleExpression %q", s.ScheduleExpression)
		}
		e := s.Target.EcsParameters
		if !strings.HasPrefix(s.Target.Arn, "arn:aws:ecs:") || !strings.Contains(s.Target.Arn, ":cluster/") || s.Target.RoleArn == "" ||
			!strings.HasSuffix(e.TaskDefinitionArn, "task-definition/walcake") || e.LaunchType != "FARGATE" || e.TaskCount != 1 ||
			s.State != "ENABLED" || s.FlexibleTimeWindow.Mode == "" {
			t.Errorf("schedule: %+v", s)
		}
	})

	t.Run("kubernetes", func(t *testing.T) {
		f, err := os.Open(filepath.Join(dir, "kubernetes.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		dec := yaml.NewDecoder(f)
		var pvcName string
		var cron *k8sCronJob
		kinds := map[string]int{}
		for {
			var doc struct {
				Kind     string `yaml:"kind"`
				Metadata struct {
					Name string `yaml:"name"`
				} `yaml:"metadata"`
			}
			var node yaml.Node
			if err := dec.Decode(&node); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatal(err)
			}
			if err := node.Decode(&doc); err != nil {
				t.Fatal(err)
			}
			kinds[doc.Kind]++
			switch doc.Kind {
			case "PersistentVolumeClaim":
				pvcName = doc.Metadata.Name
			case "CronJob":
				cron = &k8sCronJob{}
				if err := node.Decode(cron); err != nil {
					t.Fatal(err)
				}
			}
		}
		if kinds["CronJob"] != 1 || kinds["PersistentVolumeClaim"] != 1 || cron == nil {
			t.Fatalf("kinds %v", kinds)
		}
		if cron.APIVersion != "batch/v1" {
			t.Errorf("CronJob apiVersion %q", cron.APIVersion)
		}
		checkCronSchedule(t, "CronJob", cron.Spec.Schedule)
		if cron.Spec.ConcurrencyPolicy != "Forbid" {
			t.Errorf("concurrencyPolicy %q, want Forbid", cron.Spec.ConcurrencyPolicy)
		}
		pod := cron.Spec.JobTemplate.Spec.Template.Spec
		if pod.RestartPolicy != "Never" && pod.RestartPolicy != "OnFailure" {
			t.Errorf("restartPolicy %q", pod.RestartPolicy)
		}
		if pod.TerminationGracePeriodSeconds < 25 {
			t.Errorf("terminationGracePeriodSeconds %d: want at least 25, above the 20 s shutdown bound", pod.TerminationGracePeriodSeconds)
		}
		if !pod.SecurityContext.RunAsNonRoot || pod.SecurityContext.RunAsUser != 65532 {
			t.Errorf("pod securityContext %+v", pod.SecurityContext)
		}
		if len(pod.Containers) != 1 {
			t.Fatalf("%d containers", len(pod.Containers))
		}
		c := pod.Containers[0]
		if c.Image == "" || len(c.Args) == 0 || c.Args[0] != "run" || len(c.Command) != 0 {
			t.Errorf("container image %q command %v args %v: want the image's entrypoint with args [run ...]", c.Image, c.Command, c.Args)
		}
		checkArgs(t, "CronJob", c.Args)
		var names []string
		spool := ""
		for _, e := range c.Env {
			names = append(names, e.Name)
			if e.Name == "SPOOL_DIR" {
				spool = e.Value
			}
			if e.Name == "PG_CONN_STRING" && (e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil) {
				t.Error("PG_CONN_STRING is not taken from a Secret")
			}
		}
		checkEnvNames(t, "CronJob", names)
		// SPOOL_DIR lies on a volume mount whose volume is the claim.
		onClaim := false
		for _, m := range c.VolumeMounts {
			if spool == m.MountPath || strings.HasPrefix(spool, strings.TrimSuffix(m.MountPath, "/")+"/") {
				for _, v := range pod.Volumes {
					if v.Name == m.Name && v.PersistentVolumeClaim != nil && v.PersistentVolumeClaim.ClaimName == pvcName {
						onClaim = true
					}
				}
			}
		}
		if !onClaim {
			t.Errorf("SPOOL_DIR %q is not on the PersistentVolumeClaim %q", spool, pvcName)
		}
	})

	t.Run("cron", func(t *testing.T) {
		lines := 0
		sc := bufio.NewScanner(bytes.NewReader(mustRead(t, filepath.Join(dir, "walcake.cron"))))
		for sc.Scan() {
			l := strings.TrimSpace(sc.Text())
			if l == "" || strings.HasPrefix(l, "#") || regexp.MustCompile(`^[A-Z_]+=`).MatchString(l) {
				continue
			}
			f := strings.Fields(l)
			if len(f) < 7 {
				t.Errorf("cron line %q: want 5 schedule fields, a user and a command", l)
				continue
			}
			checkCronSchedule(t, "cron", strings.Join(f[:5], " "))
			if f[5] != "walcake" {
				t.Errorf("cron line runs as %q, want the walcake user", f[5])
			}
			if strings.Contains(l, "%") {
				t.Errorf("cron line %q: an unescaped %% ends the command in cron", l)
			}
			if strings.Contains(l, "walcake run") || strings.Contains(l, "walcake status") {
				lines++
			}
		}
		if lines < 2 {
			t.Errorf("%d walcake lines in the cron file, want a run and a status check", lines)
		}
	})

	t.Run("systemd", func(t *testing.T) {
		svc := parseUnit(t, filepath.Join(dir, "walcake.service"))
		tmr := parseUnit(t, filepath.Join(dir, "walcake.timer"))
		if svc["Service.Type"] != "oneshot" || !strings.Contains(svc["Service.ExecStart"], "walcake run") ||
			svc["Service.User"] == "" || svc["Service.EnvironmentFile"] == "" {
			t.Errorf("service: %v", svc)
		}
		if !strings.Contains(svc["Service.Environment"], "SPOOL_DIR=") {
			t.Errorf("service does not set SPOOL_DIR: %v", svc)
		}
		if tmr["Timer.OnCalendar"] == "" || tmr["Install.WantedBy"] != "timers.target" {
			t.Errorf("timer: %v", tmr)
		}
		sa, err := exec.LookPath("systemd-analyze")
		if err != nil {
			t.Log("systemd-analyze not installed: units parsed but not verified")
			return
		}
		// verify needs ExecStart to exist: point it at a binary that does.
		tmp := t.TempDir()
		unit := strings.ReplaceAll(string(mustRead(t, filepath.Join(dir, "walcake.service"))), "/usr/local/bin/walcake", walcakeBin)
		if err := os.WriteFile(filepath.Join(tmp, "walcake.service"), []byte(unit), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tmp, "walcake.timer"), mustRead(t, filepath.Join(dir, "walcake.timer")), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(sa, "verify", "walcake.service", "walcake.timer")
		cmd.Dir = tmp
		out, err := cmd.CombinedOutput()
		if err != nil || bytes.Contains(out, []byte("Unknown key")) || bytes.Contains(out, []byte("Failed to parse")) ||
			bytes.Contains(out, []byte("Unknown section")) {
			t.Errorf("systemd-analyze verify: %v\n%s", err, out)
		}
		if out, err := exec.Command(sa, "calendar", tmr["Timer.OnCalendar"]).CombinedOutput(); err != nil {
			t.Errorf("OnCalendar=%s: %v\n%s", tmr["Timer.OnCalendar"], err, out)
		}
	})

	t.Run("iam_policy", func(t *testing.T) {
		blocks := jsonBlocks(t, filepath.Join(root, "docs", "security.md"))
		if len(blocks) == 0 {
			t.Fatal("no JSON block in docs/security.md")
		}
		var policy struct {
			Version   string
			Statement []struct {
				Effect    string
				Action    any
				Resource  any
				Condition map[string]map[string]any
			}
		}
		if err := json.Unmarshal([]byte(blocks[0]), &policy); err != nil {
			t.Fatalf("IAM policy: %v\n%s", err, blocks[0])
		}
		actions := map[string]bool{}
		prefixed := false
		for _, s := range policy.Statement {
			for _, a := range asList(s.Action) {
				actions[a] = true
				if a == "s3:ListBucket" && s.Condition["StringLike"]["s3:prefix"] != nil {
					prefixed = true
				}
			}
			for _, r := range asList(s.Resource) {
				if r == "*" {
					t.Errorf("statement %v grants on every resource", s.Action)
				}
			}
		}
		for _, a := range []string{"s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:ListBucket", "kms:GenerateDataKey", "kms:Decrypt"} {
			if !actions[a] {
				t.Errorf("IAM policy lacks %s", a)
			}
		}
		if policy.Version != "2012-10-17" || !prefixed {
			t.Errorf("IAM policy version %q, ListBucket limited to the prefix: %v", policy.Version, prefixed)
		}
	})

	t.Run("dockerfile", func(t *testing.T) {
		df := string(mustRead(t, filepath.Join(root, "Dockerfile")))
		froms := regexp.MustCompile(`(?m)^FROM\s+(\S+)`).FindAllStringSubmatch(df, -1)
		if len(froms) < 2 {
			t.Fatalf("%d FROM lines: want a multi-stage build", len(froms))
		}
		for _, f := range froms {
			img := f[1]
			if !strings.Contains(img, ":") || strings.HasSuffix(img, ":latest") {
				t.Errorf("base image %s is not pinned", img)
			}
		}
		for _, want := range []string{"CGO_ENABLED=0", "-X main.version=", "-X main.commit=", "USER nonroot", `ENTRYPOINT ["/walcake"]`, `CMD ["run"]`, "HEALTHCHECK"} {
			if !strings.Contains(df, want) {
				t.Errorf("Dockerfile lacks %q", want)
			}
		}
	})

	t.Run("doc_links", func(t *testing.T) {
		// Every relative link of the README and docs/ points at a file that
		// exists, and the README links the operations documents.
		readme := string(mustRead(t, filepath.Join(root, "README.md")))
		for _, doc := range []string{"docs/operations.md", "docs/security.md", "docs/deploy.md"} {
			if !strings.Contains(readme, "("+doc) {
				t.Errorf("README does not link %s", doc)
			}
		}
		files, _ := filepath.Glob(filepath.Join(root, "docs", "*.md"))
		files = append(files, filepath.Join(root, "README.md"))
		link := regexp.MustCompile(`\]\(([^)#\s]+)(#[^)]*)?\)`)
		for _, f := range files {
			for _, m := range link.FindAllStringSubmatch(string(mustRead(t, f)), -1) {
				target := m[1]
				if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
					continue
				}
				if _, err := os.Stat(filepath.Join(filepath.Dir(f), target)); err != nil {
					t.Errorf("%s links %s, which does not exist", filepath.Base(f), target)
				}
			}
		}
	})
}

// checkArgs parses a manifest's walcake arguments with walcake's own CLI
// definitions: every flag must exist for the command.
func checkArgs(t *testing.T, where string, args []string) {
	t.Helper()
	if len(args) == 0 {
		return
	}
	app := newAppWith(newProcessIO(io.Discard, io.Discard))
	for _, c := range app.Commands {
		if c.Name != args[0] {
			continue
		}
		names := map[string]bool{}
		for _, f := range c.Flags {
			for _, n := range f.Names() {
				names[n] = true
			}
		}
		for _, a := range args[1:] {
			if name, ok := strings.CutPrefix(a, "--"); ok {
				name, _, _ = strings.Cut(name, "=")
				if !names[name] {
					t.Errorf("%s: %s has no flag --%s", where, args[0], name)
				}
			}
		}
		return
	}
	t.Errorf("%s: no command %q", where, args[0])
}

type k8sCronJob struct {
	APIVersion string `yaml:"apiVersion"`
	Spec       struct {
		Schedule          string `yaml:"schedule"`
		ConcurrencyPolicy string `yaml:"concurrencyPolicy"`
		JobTemplate       struct {
			Spec struct {
				Template struct {
					Spec struct {
						RestartPolicy                 string `yaml:"restartPolicy"`
						TerminationGracePeriodSeconds int    `yaml:"terminationGracePeriodSeconds"`
						SecurityContext               struct {
							RunAsNonRoot bool `yaml:"runAsNonRoot"`
							RunAsUser    int  `yaml:"runAsUser"`
						} `yaml:"securityContext"`
						Containers []struct {
							Image   string   `yaml:"image"`
							Command []string `yaml:"command"`
							Args    []string `yaml:"args"`
							Env     []struct {
								Name      string `yaml:"name"`
								Value     string `yaml:"value"`
								ValueFrom *struct {
									SecretKeyRef *struct {
										Name string `yaml:"name"`
										Key  string `yaml:"key"`
									} `yaml:"secretKeyRef"`
								} `yaml:"valueFrom"`
							} `yaml:"env"`
							VolumeMounts []struct {
								Name      string `yaml:"name"`
								MountPath string `yaml:"mountPath"`
							} `yaml:"volumeMounts"`
						} `yaml:"containers"`
						Volumes []struct {
							Name                  string `yaml:"name"`
							PersistentVolumeClaim *struct {
								ClaimName string `yaml:"claimName"`
							} `yaml:"persistentVolumeClaim"`
						} `yaml:"volumes"`
					} `yaml:"spec"`
				} `yaml:"template"`
			} `yaml:"spec"`
		} `yaml:"jobTemplate"`
	} `yaml:"spec"`
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func decodeJSON(t *testing.T, path string, v any) {
	t.Helper()
	if err := json.Unmarshal(mustRead(t, path), v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// decodeJSONStrict is decodeJSON that also checks the file is one JSON
// document.
func decodeJSONStrict(t *testing.T, path string, v any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(mustRead(t, path)))
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if dec.More() {
		t.Fatalf("%s: more than one JSON document", path)
	}
}

// parseUnit reads a systemd unit as "Section.Key" → value (the last one).
func parseUnit(t *testing.T, path string) map[string]string {
	t.Helper()
	out := map[string]string{}
	section := ""
	for _, l := range strings.Split(string(mustRead(t, path)), "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, ";"):
		case strings.HasPrefix(l, "[") && strings.HasSuffix(l, "]"):
			section = l[1 : len(l)-1]
		default:
			k, v, ok := strings.Cut(l, "=")
			if !ok || section == "" {
				t.Errorf("%s: line %q", filepath.Base(path), l)
				continue
			}
			out[section+"."+strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return out
}

// jsonBlocks returns the ```json fenced blocks of a markdown file.
func jsonBlocks(t *testing.T, path string) []string {
	t.Helper()
	var blocks []string
	var cur *strings.Builder
	for _, l := range strings.Split(string(mustRead(t, path)), "\n") {
		switch {
		case cur == nil && strings.TrimSpace(l) == "```json":
			cur = &strings.Builder{}
		case cur != nil && strings.TrimSpace(l) == "```":
			blocks = append(blocks, cur.String())
			cur = nil
		case cur != nil:
			cur.WriteString(l + "\n")
		}
	}
	return blocks
}

func asList(v any) []string {
	switch x := v.(type) {
	case string:
		return []string{x}
	case []any:
		var out []string
		for _, e := range x {
			if s, ok := e.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

// The release script builds a static binary whose --version names the
// version and commit it was given, packed with a checksum file.
func TestReleaseBuild(t *testing.T) {
	root := repoRoot(t)
	out := t.TempDir()
	platform := runtime.GOOS + "/" + runtime.GOARCH
	cmd := exec.Command("bash", filepath.Join(root, "scripts", "release.sh"))
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "VERSION=v0.0.0-test.1", "COMMIT=0123456789abcdef", "PLATFORMS="+platform, "OUT="+out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("release.sh: %v\n%s", err, b)
	}
	name := "walcake-v0.0.0-test.1-" + runtime.GOOS + "-" + runtime.GOARCH
	sums := string(mustRead(t, filepath.Join(out, "SHA256SUMS")))
	if !strings.Contains(sums, name+".tar.gz") {
		t.Errorf("SHA256SUMS: %q", sums)
	}
	x := exec.Command("tar", "-xzf", filepath.Join(out, name+".tar.gz"), "-C", out)
	if b, err := x.CombinedOutput(); err != nil {
		t.Fatalf("tar: %v\n%s", err, b)
	}
	bin := filepath.Join(out, name, "walcake")
	b, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("walcake --version: %v\n%s", err, b)
	}
	if got := strings.TrimSpace(string(b)); got != "walcake version v0.0.0-test.1 (commit 0123456789abcdef)" {
		t.Errorf("walcake --version: %q", got)
	}
	// Static: no dynamic section (no interpreter, no shared libraries).
	if elf, err := os.ReadFile(bin); err == nil && bytes.Contains(elf, []byte("/lib64/ld-linux")) {
		t.Error("the release binary is dynamically linked")
	}
	for _, f := range []string{"README.md", "docs/operations.md", "docs/deploy/kubernetes.yaml"} {
		if _, err := os.Stat(filepath.Join(out, name, f)); err != nil {
			t.Errorf("archive lacks %s", f)
		}
	}
}
