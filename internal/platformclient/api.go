package platformclient

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"

	"github.com/runagent-go/runagent/internal/platformapi"
	"github.com/runagent-go/runagent/internal/wire"
)

var empty = struct{}{}

// InvocationList is the answer of ListInvocations: wire invocation records
// as a client reads them.
type InvocationList = platformapi.InvocationList[wire.InvocationJSON]

// ValidateToken checks the client's key: POST /api/v1/tokens/validate?token=KEY.
// An invalid key is an *APIError with Status 401.
func (c *Client) ValidateToken(ctx context.Context) (*platformapi.TokenInfo, error) {
	var out platformapi.TokenInfo
	q := url.Values{"token": {c.apiKey}}
	if err := c.do(ctx, http.MethodPost, path("tokens", "validate"), q, empty, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Upload sends a bundle (the zip of an agent folder) as a new version of the
// agent: POST /api/v1/agents/upload, multipart with the form field agent_id
// (when not empty; the server then uses the config's) and the file part
// "file" named fileName. The body is streamed from zip, never held in
// memory. size is the zip's length in bytes, or -1 when unknown (the body
// is then sent chunked). progress, if not nil, is called with the number of
// the zip's bytes sent so far.
func (c *Client) Upload(ctx context.Context, agentID string, zip io.Reader, size int64, fileName string, progress func(sent int64)) (*platformapi.Upload, error) {
	// The multipart framing around the file is small and known in advance:
	// build it into buffers, then stream head, zip, tail. That gives an
	// exact Content-Length, so a server can refuse an oversized upload
	// before reading it.
	var head bytes.Buffer
	mw := multipart.NewWriter(&head)
	if agentID != "" {
		if err := mw.WriteField("agent_id", agentID); err != nil {
			return nil, err
		}
	}
	h := make(textproto.MIMEHeader)
	h.Set("Content-Disposition", fmt.Sprintf(`form-data; name="file"; filename=%q`, strings.NewReplacer(`"`, "", "\r", "", "\n", "").Replace(fileName)))
	h.Set("Content-Type", "application/zip")
	if _, err := mw.CreatePart(h); err != nil {
		return nil, err
	}
	headBytes := bytes.Clone(head.Bytes())
	head.Reset()
	if err := mw.Close(); err != nil {
		return nil, err
	}
	tail := head.Bytes()

	var file io.Reader = zip
	if progress != nil {
		file = &countingReader{r: zip, fn: progress}
	}
	body := io.MultiReader(bytes.NewReader(headBytes), file, bytes.NewReader(tail))
	req, err := c.newRequest(ctx, http.MethodPost, path("agents", "upload"), nil, io.NopCloser(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", mw.FormDataContentType())
	if size >= 0 {
		req.ContentLength = int64(len(headBytes)) + size + int64(len(tail))
	} else {
		req.ContentLength = -1
	}
	resp, err := c.send(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out platformapi.Upload
	if err := decode(resp, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

type countingReader struct {
	r    io.Reader
	n    int64
	fn   func(int64)
	last int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if n > 0 || (err == io.EOF && c.last != c.n) {
		c.last = c.n
		c.fn(c.n)
	}
	return n, err
}

// Start makes the newest uploaded version of the agent take the traffic:
// POST /api/v1/agents/{id}/start. The server answers once the version is
// installed and warm, which may take minutes (requirements are installed):
// give ctx a long deadline.
func (c *Client) Start(ctx context.Context, agentID string) (*platformapi.Deployment, error) {
	var out platformapi.Deployment
	if err := c.do(ctx, http.MethodPost, path("agents", agentID, "start"), nil, empty, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Status is GET /api/v1/agents/{id}/status.
func (c *Client) Status(ctx context.Context, agentID string) (*platformapi.AgentStatus, error) {
	var out platformapi.AgentStatus
	if err := c.do(ctx, http.MethodGet, path("agents", agentID, "status"), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ListAgents is GET /api/v1/agents: the agents the key can see.
func (c *Client) ListAgents(ctx context.Context) ([]platformapi.Agent, error) {
	var out platformapi.AgentList
	if err := c.do(ctx, http.MethodGet, path("agents"), nil, nil, &out); err != nil {
		return nil, err
	}
	return out.Agents, nil
}

// GetAgent is GET /api/v1/agents/{id}.
func (c *Client) GetAgent(ctx context.Context, agentID string) (*platformapi.AgentDetail, error) {
	var out platformapi.AgentDetail
	if err := c.do(ctx, http.MethodGet, path("agents", agentID), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// DeleteAgent is DELETE /api/v1/agents/{id}: its instances stop and its
// files go.
func (c *Client) DeleteAgent(ctx context.Context, agentID string) error {
	return c.do(ctx, http.MethodDelete, path("agents", agentID), nil, nil, nil)
}

// CreateKey is POST /api/v1/keys (admin). The answer's Key field holds the
// whole key, which the server never shows again.
func (c *Client) CreateKey(ctx context.Context, req platformapi.KeyRequest) (*platformapi.Key, error) {
	if req.Agents == nil {
		req.Agents = []string{}
	}
	if req.Scopes == nil {
		req.Scopes = []string{}
	}
	var out platformapi.Key
	if err := c.do(ctx, http.MethodPost, path("keys"), nil, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ListKeys is GET /api/v1/keys (admin).
func (c *Client) ListKeys(ctx context.Context) ([]platformapi.Key, error) {
	var out platformapi.KeyList
	if err := c.do(ctx, http.MethodGet, path("keys"), nil, nil, &out); err != nil {
		return nil, err
	}
	return out.Keys, nil
}

// RevokeKey is DELETE /api/v1/keys/{id} (admin); the key stops working at once.
func (c *Client) RevokeKey(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, path("keys", id), nil, nil, nil)
}

// ListInvocations is GET /api/v1/invocations over the agents the key can
// see, newest first. Empty agentID or status and limit <= 0 are left out
// (the server's defaults apply).
func (c *Client) ListInvocations(ctx context.Context, agentID, status string, limit int) (*InvocationList, error) {
	q := url.Values{}
	if agentID != "" {
		q.Set("agent_id", agentID)
	}
	if status != "" {
		q.Set("status", status)
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var out InvocationList
	if err := c.do(ctx, http.MethodGet, path("invocations"), q, nil, &out); err != nil {
		return nil, err
	}
	if out.Invocations == nil {
		out.Invocations = []wire.InvocationJSON{}
	}
	return &out, nil
}

// GetInvocation is GET /api/v1/invocations/{id}.
func (c *Client) GetInvocation(ctx context.Context, invocationID string) (*wire.InvocationJSON, error) {
	var out wire.InvocationJSON
	if err := c.do(ctx, http.MethodGet, path("invocations", invocationID), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Logs is one page of GET /api/v1/agents/{id}/logs: the lines after the
// sequence number after (0: from the first kept), of one invocation when
// invocationID is not empty, at most limit (<= 0: the server's default).
// Pass the answer's NextAfter as after to read on.
func (c *Client) Logs(ctx context.Context, agentID, invocationID string, after int64, limit int) (*platformapi.LogPage, error) {
	q := url.Values{}
	if invocationID != "" {
		q.Set("invocation_id", invocationID)
	}
	if after > 0 {
		q.Set("after", strconv.FormatInt(after, 10))
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var out platformapi.LogPage
	if err := c.do(ctx, http.MethodGet, path("agents", agentID, "logs"), q, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// maxLogLine bounds one NDJSON line of a followed log stream.
const maxLogLine = 4 << 20

// FollowLogs streams the agent's log lines after the sequence number after
// as they arrive (GET /api/v1/agents/{id}/logs?follow=true, NDJSON), calling
// fn for each. It returns when fn fails (with that error), when ctx ends
// (with ctx.Err()), or when the server closes the stream (nil).
func (c *Client) FollowLogs(ctx context.Context, agentID string, after int64, fn func(platformapi.LogLine) error) error {
	q := url.Values{"follow": {"true"}}
	if after > 0 {
		q.Set("after", strconv.FormatInt(after, 10))
	}
	req, err := c.newRequest(ctx, http.MethodGet, path("agents", agentID, "logs"), q, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/x-ndjson")
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return decode(resp, nil)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), maxLogLine)
	for sc.Scan() {
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		var l platformapi.LogLine
		if err := json.Unmarshal(b, &l); err != nil {
			return fmt.Errorf("log stream: a line is not a log object: %w", err)
		}
		if err := fn(l); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err := sc.Err(); err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("log stream: %w", err)
	}
	return nil
}

// ListNodes is GET /api/v1/nodes (admin): a cluster's live nodes.
func (c *Client) ListNodes(ctx context.Context) (platformapi.NodeList, error) {
	var out platformapi.NodeList
	err := c.do(ctx, http.MethodGet, path("nodes"), nil, nil, &out)
	return out, err
}

// NodeAction is POST /api/v1/nodes/{id}/{action} (admin): drain or resume.
func (c *Client) NodeAction(ctx context.Context, node, action string) error {
	return c.do(ctx, http.MethodPost, path("nodes", node, action), nil, nil, nil)
}
