// standin answers HTTP the way the images in the user's notes do, so the workloads run without a
// registry. One static binary, one mode per image; each mode's behaviour is taken from the notes and the
// book's sources as summarised in the workload catalog (section 7).
//
//	standin kubia                      luksa/kubia: "You've hit <hostname>" on :8080
//	standin kubia -version v3          luksa/kubia:vN: "This is vN running in pod <hostname>"; v3 fails from request 5
//	standin kubia-pet                  luksa/kubia-pet: POST stores the body in /var/data/kubia.txt
//	standin hello                      kubetm/hello: "Hello Kubernetes!" on :8000
//	standin ok                         any 200 on $PORT (lines_admin_front: 3000)
//	standin proxy                      goproxy: a forward HTTP proxy (CONNECT and absolute URLs) on :8080
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: standin kubia|kubia-pet|hello|ok|proxy [-port N] [-version vN] [-data FILE]")
		os.Exit(2)
	}
	mode := os.Args[1]
	flags := flag.NewFlagSet(mode, flag.ExitOnError)
	port := flags.String("port", "", "listen port (default: the image's own port, or $PORT)")
	version := flags.String("version", "", "kubia version to report (v1..v4); empty means the plain kubia image")
	dataFile := flags.String("data", "/var/data/kubia.txt", "where kubia-pet keeps the posted data")
	flags.Parse(os.Args[2:])

	// Like console.log in the Node originals: plain lines on stdout, no timestamps.
	log.SetFlags(0)
	log.SetOutput(os.Stdout)
	hostname, _ := os.Hostname()

	var handler http.Handler
	defaultPort := "8080"
	switch mode {
	case "kubia":
		handler = kubia(hostname, *version)
	case "kubia-pet":
		handler = kubiaPet(hostname, *dataFile)
	case "hello":
		defaultPort = "8000"
		handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "Hello Kubernetes!\n")
		})
	case "ok":
		defaultPort = "3000"
		handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "OK from %s\n", hostname)
		})
	case "proxy":
		handler = proxy()
	default:
		fmt.Fprintf(os.Stderr, "standin: unknown mode %q; use kubia, kubia-pet, hello, ok or proxy\n", mode)
		os.Exit(2)
	}
	addr := ":" + firstNonEmpty(*port, os.Getenv("PORT"), defaultPort)
	if mode == "kubia" || mode == "kubia-pet" {
		log.Print("Kubia server starting...")
	} else {
		log.Printf("%s stand-in listening on %s", mode, addr)
	}
	server := &http.Server{Addr: addr, Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(server.ListenAndServe())
}

func firstNonEmpty(values ...string) string {
	for _, v := range values {
		if v != "" {
			return v
		}
	}
	return ""
}

func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func kubia(hostname, version string) http.Handler {
	var served atomic.Int64
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log.Printf("Received request from %s", remoteIP(r))
		n := served.Add(1)
		switch {
		case version == "":
			fmt.Fprintf(w, "You've hit %s\n", hostname)
		case version == "v3" && n > 4:
			// The notes' "bad version": healthy for four requests, then every request fails.
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprintf(w, "Some internal error has occurred! This is pod %s\n", hostname)
		default:
			fmt.Fprintf(w, "This is %s running in pod %s\n", version, hostname)
		}
	})
}

func kubiaPet(hostname, dataFile string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			body, err := io.ReadAll(r.Body)
			if err == nil {
				err = os.WriteFile(dataFile, body, 0o644)
			}
			if err != nil {
				log.Printf("storing data failed: %v", err)
				http.Error(w, "Could not store data: "+err.Error()+"\n", http.StatusInternalServerError)
				return
			}
			log.Print("New data has been received and stored.")
			fmt.Fprintf(w, "Data stored on pod %s\n", hostname)
			return
		}
		data := "No data posted yet"
		if stored, err := os.ReadFile(dataFile); err == nil {
			data = string(stored)
		}
		fmt.Fprintf(w, "You've hit %s\nData stored on this pod: %s\n", hostname, data)
	})
}

// proxy forwards plain HTTP requests with absolute URLs and tunnels CONNECT; anything else (a probe or
// a browser hitting the port directly) gets a short 200 so health checks pass.
func proxy() http.Handler {
	transport := &http.Transport{Proxy: nil}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodConnect:
			tunnel(w, r)
		case r.URL.IsAbs():
			r.RequestURI = ""
			r.Header.Del("Proxy-Connection")
			resp, err := transport.RoundTrip(r)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			defer resp.Body.Close()
			for k, v := range resp.Header {
				w.Header()[k] = v
			}
			w.WriteHeader(resp.StatusCode)
			io.Copy(w, resp.Body)
		default:
			io.WriteString(w, "goproxy stand-in: send proxy requests (absolute URL or CONNECT)\n")
		}
	})
}

func tunnel(w http.ResponseWriter, r *http.Request) {
	upstream, err := net.DialTimeout("tcp", r.Host, 10*time.Second)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	hijacker, ok := w.(http.Hijacker)
	if !ok {
		upstream.Close()
		http.Error(w, "connection cannot be hijacked", http.StatusInternalServerError)
		return
	}
	client, buffered, err := hijacker.Hijack()
	if err != nil {
		upstream.Close()
		return
	}
	io.WriteString(client, "HTTP/1.1 200 Connection established\r\n\r\n")
	go func() {
		io.Copy(upstream, buffered)
		upstream.Close()
	}()
	io.Copy(client, upstream)
	client.Close()
}

