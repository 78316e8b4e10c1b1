// goload sends the seed's API load through Go's default HTTP client, to
// show what that client does with connections: 1000 streams start, then
// each sends its share of form-encoded messages (the seed's `message`
// field), one after another. It counts, from the client's side, the TCP
// connections the client dialed and the requests that went out on a
// connection used before. (The transport dials whenever a request finds no
// idle connection, and keeps at most two idle per host, so with many
// requests at once most dialed connections are closed again, some without
// ever carrying a request.)
// Results are not read (the standard library has no WebSocket client);
// `bench api` measures the whole path.
//
//	cd scripts/goload && go run . -url http://127.0.0.1:8082 -key demo-key
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

var dialed, reused, failed atomic.Int64

// post sends one request with the default client and reads its body whole,
// so that the connection may be kept (Go keeps it only then).
func post(target, key, contentType, body string) ([]byte, error) {
	trace := &httptrace.ClientTrace{
		ConnectDone: func(network, addr string, err error) {
			if err == nil {
				dialed.Add(1)
			}
		},
		GotConn: func(info httptrace.GotConnInfo) {
			if info.Reused {
				reused.Add(1)
			}
		},
	}
	req, err := http.NewRequest(http.MethodPost, target, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
	req.Header.Set("X-API-Key", key)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		return nil, fmt.Errorf("%s: %s", resp.Status, data)
	}
	return data, nil
}

func main() {
	base := flag.String("url", "http://127.0.0.1:8082", "the gateway")
	key := flag.String("key", os.Getenv("API_KEY"), "API key (default $API_KEY)")
	streams := flag.Int("streams", 1000, "streams, each sending from a goroutine of its own")
	messages := flag.Int("messages", 100000, "messages in all, spread evenly over the streams")
	clientIDs := flag.Bool("client-ids", false, "start each stream with a form stream_id of its own (the seed's way) instead of a server-chosen id")
	flag.Parse()
	if *key == "" {
		fmt.Fprintln(os.Stderr, "goload: -key (or API_KEY) is required")
		os.Exit(2)
	}

	ids := make([]string, *streams)
	run := time.Now().UnixNano()
	var wg sync.WaitGroup
	began := time.Now()
	for i := range ids {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			contentType, body := "", ""
			if *clientIDs {
				contentType = "application/x-www-form-urlencoded"
				body = url.Values{"stream_id": {fmt.Sprintf("goload-%x-%d", run, i)}}.Encode()
			}
			data, err := post(*base+"/stream/start", *key, contentType, body)
			if err != nil {
				fmt.Fprintln(os.Stderr, "goload: starting a stream:", err)
				os.Exit(1)
			}
			var started struct {
				StreamID string `json:"stream_id"`
			}
			if err := json.Unmarshal(data, &started); err != nil {
				fmt.Fprintln(os.Stderr, "goload: bad start answer:", err)
				os.Exit(1)
			}
			ids[i] = started.StreamID
		}(i)
	}
	wg.Wait()
	startTime := time.Since(began)
	startDialed, startReused := dialed.Load(), reused.Load()

	began = time.Now()
	for i, id := range ids {
		count := *messages / *streams
		if i < *messages%*streams {
			count++
		}
		wg.Add(1)
		go func(id string, count int) {
			defer wg.Done()
			for j := 0; j < count; j++ {
				form := url.Values{"message": {fmt.Sprintf("message %d of %s", j, id)}}.Encode()
				if _, err := post(*base+"/stream/"+id+"/send", *key, "application/x-www-form-urlencoded", form); err != nil {
					failed.Add(1)
				}
			}
		}(id, count)
	}
	wg.Wait()
	elapsed := time.Since(began)

	sendDialed, sendReused := dialed.Load()-startDialed, reused.Load()-startReused
	fmt.Printf("starts: %d streams in %.2f s; %d connections dialed, %d requests on a reused one\n",
		*streams, startTime.Seconds(), startDialed, startReused)
	fmt.Printf("sends: %d in %.2f s (%.0f msg/s), %d failed; %d connections dialed, %d requests on a reused one\n",
		*messages, elapsed.Seconds(), float64(*messages)/elapsed.Seconds(), failed.Load(), sendDialed, sendReused)

	// Leave no streams behind under the key's quota.
	for _, id := range ids {
		req, _ := http.NewRequest(http.MethodDelete, *base+"/stream/"+id, nil)
		req.Header.Set("X-API-Key", *key)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
}
