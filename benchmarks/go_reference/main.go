// gowatch: the least a Go proxy can do, as a floor for benchmarks/bench_proxy.py.
//
// It watches one etcd key and, for every put, writes the template with {{.Host}}
// replaced by the value into a file, in place, as the original Go proxy wrote
// pgbouncer.ini: no validation, no temporary file and rename, no fsync, no RELOAD, no
// acknowledgement. Measured with the same harness as pgcm-proxy, on the same machine
// and etcd, it shows what "no slower than the Go original" means there.
//
// Usage: gowatch ENDPOINT KEY TEMPLATE OUTPUT
//
// Built by bench_proxy.py in GOPATH mode against Debian's golang-etcd-server-dev.
package main

import (
	"context"
	"fmt"
	"io/ioutil"
	"os"
	"strings"

	"go.etcd.io/etcd/clientv3"
)

func main() {
	if len(os.Args) != 5 {
		fmt.Fprintln(os.Stderr, "usage: gowatch ENDPOINT KEY TEMPLATE OUTPUT")
		os.Exit(2)
	}
	endpoint, key, templatePath, output := os.Args[1], os.Args[2], os.Args[3], os.Args[4]
	template, err := ioutil.ReadFile(templatePath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	client, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer client.Close()
	for response := range client.Watch(context.Background(), key) {
		for _, event := range response.Events {
			rendered := strings.ReplaceAll(string(template), "{{.Host}}", string(event.Kv.Value))
			if err := ioutil.WriteFile(output, []byte(rendered), 0o644); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
		}
	}
}
