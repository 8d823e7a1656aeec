// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// zmesh transparent capture. One object, loaded once per node by the zmesh-ebpf crate:
//
//   pod cgroup:   connect4/6      app TCP connect -> 127.0.0.1 / ::1 : outbound port (15001),
//                                 original destination kept in the socket's local storage
//                 sockops         at TCP connect (source port known), re-keys the original
//                                 destination by (netns, source address, source port)
//                 getpeername4/6  the app sees the original destination as its peer
//                 bind4/6         apps may not bind the proxy's ports
//   proxy cgroup: getsockopt      SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST answered from the map,
//                                 so the proxy reads it exactly as after an nftables REDIRECT
//                 sockops         remembers the proxy's own connections by 4-tuple
//   pod netns:    sk_lookup       TCP for a pod address, except the HBONE port and the proxy's
//                                 own connections, goes to the inbound listener
//
// No loops by construction: the proxy runs outside the pod's cgroup (connect hooks never see
// its sockets), and sk_lookup skips every connection the proxy opened.

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define IPPROTO_TCP 6
#define SOL_IP 0
#define SOL_IPV6 41
#define SO_ORIGINAL_DST 80 // also IP6T_SO_ORIGINAL_DST

#define ALLOW 1
#define DENY 0

// Set by the loader before the object is loaded (aya `override_global`).
volatile const __u16 zm_outbound_port = 15001;
volatile const __u16 zm_inbound_port = 15006;
volatile const __u16 zm_hbone_port = 15008;

// A socket address with IPv4 as v4-mapped IPv6, so one key type serves both families.
struct zm_addr {
	__u32 ip[4];  // network byte order
	__u16 port;   // host byte order
	__u16 family; // AF_INET when the app connected over IPv4 (incl. v4-mapped on a v6 socket)
};

struct zm_tuple {
	__u64 netns; // netns cookie
	struct zm_addr addr;
	__u32 pad;
};

struct zm_pod {
	__u32 flags; // reserved
};

// Network namespaces (by cookie) of enrolled pods: connect/bind hooks act only there, so a
// process of the pod's cgroup that moved to another namespace is left alone.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct zm_pod);
} zm_pods SEC(".maps");

// Original destination of a redirected app socket; freed with the socket.
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct zm_addr);
} zm_sk_orig SEC(".maps");

// (netns, app source address) -> original destination, for the proxy's getsockopt. Entries
// are removed when the app socket closes; LRU bounds them if a close is ever missed.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct zm_tuple);
	__type(value, struct zm_addr);
} zm_orig_dst SEC(".maps");

// Captured pod addresses. An address here whose listener is gone (the proxy closed it or is
// restarting) is refused rather than delivered to the app around the proxy.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct zm_addr);
	__type(value, __u32);
} zm_captured SEC(".maps");

// Pod address -> the proxy's inbound listener in that pod's netns. The kernel drops an entry
// when its socket closes.
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 4096);
	__type(key, struct zm_addr);
	__type(value, __u32); // a socket fd on update, as aya's SockHash writes it
} zm_inbound SEC(".maps");

// Connections the proxy itself opens (its sockets, from its own cgroup), by 4-tuple as the
// receiving side sees it. sk_lookup leaves these alone: that is how the proxy's connection to
// the app inside the pod is told from outside traffic, even when the proxy uses the client's
// address as its source. (Neither the ingress interface, which for locally delivered traffic
// is reported as the pod's interface, nor the proxy's SO_MARK is usable there.)
struct zm_flow {
	__u32 src[4];
	__u32 dst[4];
	__u16 sport; // host byte order
	__u16 dport; // host byte order
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct zm_flow);
	__type(value, __u8);
} zm_proxy_flows SEC(".maps");

static __always_inline int pod_enrolled(void *ctx)
{
	__u64 netns = bpf_get_netns_cookie(ctx);
	return bpf_map_lookup_elem(&zm_pods, &netns) != NULL;
}

static __always_inline void set_v4mapped(__u32 ip[4], __u32 ip4)
{
	ip[0] = 0;
	ip[1] = 0;
	ip[2] = bpf_htonl(0xffff);
	ip[3] = ip4;
}

static __always_inline int is_v4mapped(const __u32 ip[4])
{
	return ip[0] == 0 && ip[1] == 0 && ip[2] == bpf_htonl(0xffff);
}

// Loopback and the unspecified address stay inside the pod: never captured.
static __always_inline int is_local_v4(__u32 ip4)
{
	return ip4 == 0 || (bpf_ntohl(ip4) >> 24) == 127;
}

static __always_inline int is_local_v6(const __u32 ip[4])
{
	if (ip[0] != 0 || ip[1] != 0)
		return 0;
	if (ip[2] == bpf_htonl(0xffff))
		return is_local_v4(ip[3]);
	return ip[2] == 0 && (ip[3] == 0 || ip[3] == bpf_htonl(1));
}

static __always_inline int tcp_app_socket(struct bpf_sock_addr *ctx)
{
	return ctx->type == SOCK_STREAM && ctx->protocol == IPPROTO_TCP;
}

SEC("cgroup/connect4")
int zm_connect4(struct bpf_sock_addr *ctx)
{
	if (!tcp_app_socket(ctx) || is_local_v4(ctx->user_ip4) || !pod_enrolled(ctx))
		return ALLOW;
	struct zm_addr *orig = bpf_sk_storage_get(&zm_sk_orig, ctx->sk, 0,
						  BPF_SK_STORAGE_GET_F_CREATE);
	// Without a place for the original destination the proxy could not route the
	// connection: refuse it rather than let it bypass the mesh.
	if (!orig)
		return DENY;
	set_v4mapped(orig->ip, ctx->user_ip4);
	orig->port = bpf_ntohs(ctx->user_port);
	orig->family = AF_INET;
	ctx->user_ip4 = bpf_htonl(0x7f000001);
	ctx->user_port = bpf_htons(zm_outbound_port);
	return ALLOW;
}

SEC("cgroup/connect6")
int zm_connect6(struct bpf_sock_addr *ctx)
{
	__u32 ip[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
	if (!tcp_app_socket(ctx) || is_local_v6(ip) || !pod_enrolled(ctx))
		return ALLOW;
	struct zm_addr *orig = bpf_sk_storage_get(&zm_sk_orig, ctx->sk, 0,
						  BPF_SK_STORAGE_GET_F_CREATE);
	if (!orig)
		return DENY;
	int v4 = is_v4mapped(ip);
	orig->ip[0] = ip[0];
	orig->ip[1] = ip[1];
	orig->ip[2] = ip[2];
	orig->ip[3] = ip[3];
	orig->port = bpf_ntohs(ctx->user_port);
	orig->family = v4 ? AF_INET : AF_INET6;
	// A v4-mapped destination on a dual-stack socket must stay IPv4: redirect to
	// ::ffff:127.0.0.1, which reaches the proxy's IPv4 listener.
	ctx->user_ip6[0] = 0;
	ctx->user_ip6[1] = 0;
	ctx->user_ip6[2] = v4 ? bpf_htonl(0xffff) : 0;
	ctx->user_ip6[3] = v4 ? bpf_htonl(0x7f000001) : bpf_htonl(1);
	ctx->user_port = bpf_htons(zm_outbound_port);
	return ALLOW;
}

// Context fields read by both sides of a branch: read them all, once, with volatile loads.
// Otherwise clang merges the branches into one load through a computed context pointer, which
// the verifier rejects ("dereference of modified ctx ptr").
#define READ_ONCE(x) (*(volatile typeof(x) *)&(x))

// The app socket's source, as the proxy will see it as its peer. For a v4-mapped connect on a
// v6 socket the v6 source is set only after the connect callback, so connects that were IPv4
// always use the IPv4 source.
static __always_inline void app_source(struct bpf_sock_ops *ops, __u16 family, struct zm_tuple *key)
{
	__u32 ip4 = READ_ONCE(ops->local_ip4);
	__u32 a = READ_ONCE(ops->local_ip6[0]), b = READ_ONCE(ops->local_ip6[1]), c = READ_ONCE(ops->local_ip6[2]),
	      d = READ_ONCE(ops->local_ip6[3]);
	__u32 port = READ_ONCE(ops->local_port);
	if (family == AF_INET) {
		set_v4mapped(key->addr.ip, ip4);
	} else {
		key->addr.ip[0] = a;
		key->addr.ip[1] = b;
		key->addr.ip[2] = c;
		key->addr.ip[3] = d;
	}
	key->addr.port = (__u16)port;
	key->addr.family = family;
	key->netns = bpf_get_netns_cookie(ops);
}

// The app socket's source address is chosen inside connect(), after the connect hook: re-key
// the original destination by it at TCP_CONNECT (before the SYN leaves, so it is in the map
// before the proxy can accept the connection), and drop the entry when the socket closes.
// One call site for app_source(): two inlined copies get merged by clang into a form the
// verifier rejects.
SEC("sockops")
int zm_sockops(struct bpf_sock_ops *ops)
{
	__u32 op = ops->op;
	int closing = op == BPF_SOCK_OPS_STATE_CB && ops->args[1] == BPF_TCP_CLOSE;
	if (op != BPF_SOCK_OPS_TCP_CONNECT_CB && !closing)
		return 1;
	struct bpf_sock *sk = ops->sk;
	if (!sk)
		return 1;
	struct zm_addr *orig = bpf_sk_storage_get(&zm_sk_orig, sk, 0, 0);
	if (!orig)
		return 1;
	struct zm_tuple key = {};
	app_source(ops, orig->family, &key);
	if (closing) {
		bpf_map_delete_elem(&zm_orig_dst, &key);
	} else if (bpf_map_update_elem(&zm_orig_dst, &key, orig, BPF_ANY) == 0) {
		bpf_sock_ops_cb_flags_set(ops, BPF_SOCK_OPS_STATE_CB_FLAG);
	}
	return 1;
}

// On the proxy's cgroup: remembers each connection the proxy opens while it is open.
SEC("sockops")
int zm_proxy_sockops(struct bpf_sock_ops *ops)
{
	__u32 op = ops->op;
	int closing = op == BPF_SOCK_OPS_STATE_CB && ops->args[1] == BPF_TCP_CLOSE;
	if (op != BPF_SOCK_OPS_TCP_CONNECT_CB && !closing)
		return 1;
	__u32 family = READ_ONCE(ops->family);
	__u32 l4 = READ_ONCE(ops->local_ip4), r4 = READ_ONCE(ops->remote_ip4);
	__u32 l[4] = {READ_ONCE(ops->local_ip6[0]), READ_ONCE(ops->local_ip6[1]),
		      READ_ONCE(ops->local_ip6[2]), READ_ONCE(ops->local_ip6[3])};
	__u32 r[4] = {READ_ONCE(ops->remote_ip6[0]), READ_ONCE(ops->remote_ip6[1]),
		      READ_ONCE(ops->remote_ip6[2]), READ_ONCE(ops->remote_ip6[3])};
	struct zm_flow flow = {};
	flow.sport = (__u16)READ_ONCE(ops->local_port);
	flow.dport = (__u16)bpf_ntohl(READ_ONCE(ops->remote_port));
	// IPv4, or IPv4 through a v6 socket (whose v6 source is not set yet at connect time).
	if (family == AF_INET || is_v4mapped(r)) {
		set_v4mapped(flow.src, l4);
		set_v4mapped(flow.dst, r4);
	} else {
		__builtin_memcpy(flow.src, l, sizeof(l));
		__builtin_memcpy(flow.dst, r, sizeof(r));
	}
	if (closing) {
		bpf_map_delete_elem(&zm_proxy_flows, &flow);
	} else {
		__u8 one = 1;
		if (bpf_map_update_elem(&zm_proxy_flows, &flow, &one, BPF_ANY) == 0)
			bpf_sock_ops_cb_flags_set(ops, BPF_SOCK_OPS_STATE_CB_FLAG);
	}
	return 1;
}

// Runs after the kernel's own getsockopt. When netfilter already answered (an nftables
// REDIRECT), its answer stands; otherwise the original destination comes from the map, keyed by
// the accepted socket's peer, which is the app socket's source.
SEC("cgroup/getsockopt")
int zm_getsockopt(struct bpf_sockopt *ctx)
{
	if (ctx->optname != SO_ORIGINAL_DST || (ctx->level != SOL_IP && ctx->level != SOL_IPV6))
		return 1;
	if (ctx->retval == 0)
		return 1;
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	struct zm_tuple key = {};
	key.netns = bpf_get_netns_cookie(ctx);
	__u32 family = READ_ONCE(sk->family), ip4 = READ_ONCE(sk->dst_ip4);
	__u32 a = READ_ONCE(sk->dst_ip6[0]), b = READ_ONCE(sk->dst_ip6[1]), c = READ_ONCE(sk->dst_ip6[2]), d = READ_ONCE(sk->dst_ip6[3]);
	__u16 port = READ_ONCE(sk->dst_port);
	if (family == AF_INET) {
		set_v4mapped(key.addr.ip, ip4);
	} else {
		key.addr.ip[0] = a;
		key.addr.ip[1] = b;
		key.addr.ip[2] = c;
		key.addr.ip[3] = d;
	}
	key.addr.port = bpf_ntohs(port);
	key.addr.family = is_v4mapped(key.addr.ip) ? AF_INET : AF_INET6;
	struct zm_addr *orig = bpf_map_lookup_elem(&zm_orig_dst, &key);
	if (!orig)
		return 1;

	__u8 *optval = ctx->optval;
	__u8 *end = ctx->optval_end;
	if (ctx->level == SOL_IP) {
		// struct sockaddr_in: family, port, address, 8 bytes of zero.
		if (orig->family != AF_INET || optval + 16 > end)
			return 1;
		__builtin_memset(optval, 0, 16);
		*(__u16 *)optval = AF_INET;
		*(__u16 *)(optval + 2) = bpf_htons(orig->port);
		*(__u32 *)(optval + 4) = orig->ip[3];
		ctx->optlen = 16;
	} else {
		// struct sockaddr_in6: family, port, flowinfo, address, scope id.
		if (optval + 28 > end)
			return 1;
		__builtin_memset(optval, 0, 28);
		*(__u16 *)optval = AF_INET6;
		*(__u16 *)(optval + 2) = bpf_htons(orig->port);
		*(__u32 *)(optval + 8) = orig->ip[0];
		*(__u32 *)(optval + 12) = orig->ip[1];
		*(__u32 *)(optval + 16) = orig->ip[2];
		*(__u32 *)(optval + 20) = orig->ip[3];
		ctx->optlen = 28;
	}
	ctx->retval = 0;
	return 1;
}

SEC("cgroup/getpeername4")
int zm_getpeername4(struct bpf_sock_addr *ctx)
{
	struct zm_addr *orig = bpf_sk_storage_get(&zm_sk_orig, ctx->sk, 0, 0);
	if (!orig || orig->family != AF_INET)
		return 1;
	ctx->user_ip4 = orig->ip[3];
	ctx->user_port = bpf_htons(orig->port);
	return 1;
}

SEC("cgroup/getpeername6")
int zm_getpeername6(struct bpf_sock_addr *ctx)
{
	struct zm_addr *orig = bpf_sk_storage_get(&zm_sk_orig, ctx->sk, 0, 0);
	if (!orig)
		return 1;
	ctx->user_ip6[0] = orig->ip[0];
	ctx->user_ip6[1] = orig->ip[1];
	ctx->user_ip6[2] = orig->ip[2];
	ctx->user_ip6[3] = orig->ip[3];
	ctx->user_port = bpf_htons(orig->port);
	return 1;
}

static __always_inline int proxy_port(__u16 port)
{
	return port == zm_outbound_port || port == zm_inbound_port || port == zm_hbone_port;
}

// Like Istio's block_ztunnel_ports: an app holding 15001/15006/15008 in the pod's netns would
// receive traffic meant for the proxy (or keep the proxy from listening).
SEC("cgroup/bind4")
int zm_bind4(struct bpf_sock_addr *ctx)
{
	if (proxy_port(bpf_ntohs(ctx->user_port)) && pod_enrolled(ctx))
		return DENY;
	return ALLOW;
}

SEC("cgroup/bind6")
int zm_bind6(struct bpf_sock_addr *ctx)
{
	if (proxy_port(bpf_ntohs(ctx->user_port)) && pod_enrolled(ctx))
		return DENY;
	return ALLOW;
}

// Inbound steering: TCP for a captured pod address goes to the proxy's inbound listener,
// except the HBONE port (whose listener the normal lookup finds) and the proxy's own
// connections to the app.
SEC("sk_lookup")
int zm_sk_lookup(struct bpf_sk_lookup *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	__u32 local_port = READ_ONCE(ctx->local_port);
	if (local_port == zm_hbone_port)
		return SK_PASS;
	__u32 family = READ_ONCE(ctx->family);
	__u32 l4 = READ_ONCE(ctx->local_ip4), r4 = READ_ONCE(ctx->remote_ip4);
	__u32 l[4] = {READ_ONCE(ctx->local_ip6[0]), READ_ONCE(ctx->local_ip6[1]),
		      READ_ONCE(ctx->local_ip6[2]), READ_ONCE(ctx->local_ip6[3])};
	__u32 r[4] = {READ_ONCE(ctx->remote_ip6[0]), READ_ONCE(ctx->remote_ip6[1]),
		      READ_ONCE(ctx->remote_ip6[2]), READ_ONCE(ctx->remote_ip6[3])};
	struct zm_flow flow = {};
	struct zm_addr key = {};
	if (family == AF_INET) {
		set_v4mapped(flow.src, r4);
		set_v4mapped(flow.dst, l4);
		key.family = AF_INET;
	} else {
		__builtin_memcpy(flow.src, r, sizeof(r));
		__builtin_memcpy(flow.dst, l, sizeof(l));
		key.family = AF_INET6;
	}
	__builtin_memcpy(key.ip, flow.dst, sizeof(key.ip));
	if (!bpf_map_lookup_elem(&zm_captured, &key))
		return SK_PASS; // not a captured pod address
	flow.sport = bpf_ntohs(READ_ONCE(ctx->remote_port));
	flow.dport = (__u16)local_port;
	if (bpf_map_lookup_elem(&zm_proxy_flows, &flow))
		return SK_PASS;
	// A captured address whose listener is missing or cannot take the connection (wrong
	// family): refuse rather than deliver it to the app around the proxy.
	struct bpf_sock *listener = bpf_map_lookup_elem(&zm_inbound, &key);
	if (!listener)
		return SK_DROP;
	long err = bpf_sk_assign(ctx, listener, 0);
	bpf_sk_release(listener);
	return err == 0 ? SK_PASS : SK_DROP;
}

char _license[] SEC("license") = "Dual BSD/GPL";
