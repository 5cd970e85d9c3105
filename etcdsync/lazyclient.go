package etcdsync

import (
	"context"
	"errors"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrClientClosed is returned by LazyClient.Get after Close.
var ErrClientClosed = errors.New("etcdsync: client closed")

// LazyClient makes one etcd client on the first Get that succeeds and
// shares it between its users. clientv3.New authenticates a user name and
// password before it returns, so with auth no client can be made while etcd
// is down; a component that must start anyway (the Syncer serving its
// snapshot, a global Coordinator enforcing safe shares) takes Get as its
// connect function and retries it like any other etcd error. The
// LazyClient owns the client: its users never close it.
type LazyClient struct {
	connect func(context.Context) (*clientv3.Client, error)

	mu     sync.Mutex
	cli    *clientv3.Client
	closed bool
}

// NewLazyClient returns a LazyClient that makes its client with connect,
// e.g. ClientConfig.Connect.
func NewLazyClient(connect func(context.Context) (*clientv3.Client, error)) *LazyClient {
	return &LazyClient{connect: connect}
}

// Get returns the client, making it first if no Get has succeeded yet.
// Concurrent first calls may each dial; one client is kept and the others
// are closed, so a slow dial never holds up Close or the other callers.
func (l *LazyClient) Get(ctx context.Context) (*clientv3.Client, error) {
	l.mu.Lock()
	cli, closed := l.cli, l.closed
	l.mu.Unlock()
	switch {
	case closed:
		return nil, ErrClientClosed
	case cli != nil:
		return cli, nil
	}
	cli, err := l.connect(ctx)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.closed:
		cli.Close()
		return nil, ErrClientClosed
	case l.cli != nil: // another caller won
		cli.Close()
		return l.cli, nil
	}
	l.cli = cli
	return cli, nil
}

// Close closes the client, if one was made; later Gets fail.
func (l *LazyClient) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	if l.cli == nil {
		return nil
	}
	return l.cli.Close()
}
