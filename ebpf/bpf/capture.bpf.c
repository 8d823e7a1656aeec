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
//   pod netns:    sk_lookup       TCP arriving on a non-loopback interface for a pod address,
//                                 except the HBONE port, goes to the inbound listener
//
// No loops by construction: the proxy runs outside the pod's cgroup (connect hooks never see
// its sockets), and its own connections to the app arrive over loopback, which sk_lookup
// ignores.

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
#define LOOPBACK_IFINDEX 1 // lo is ifindex 1 in every network namespace

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

// Pod address -> the proxy's inbound listener in that pod's netns.
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 4096);
	__type(key, struct zm_addr);
	__type(value, __u64);
} zm_inbound SEC(".maps");

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

// The app socket's source address is chosen inside connect(), after the connect hook: re-key
// the original destination by it here, before the SYN leaves, so it is in the map before the
// proxy can accept the connection.
static __always_inline void remember_tuple(struct bpf_sock_ops *ops)
{
	struct bpf_sock *sk = ops->sk;
	if (!sk)
		return;
	struct zm_addr *orig = bpf_sk_storage_get(&zm_sk_orig, sk, 0, 0);
	if (!orig)
		return;
	struct zm_tuple key = {};
	key.netns = bpf_get_netns_cookie(ops);
	// For a v4-mapped connect on a v6 socket the v6 source is set only after this
	// callback, so IPv4 connects always use the IPv4 source.
	if (orig->family == AF_INET) {
		set_v4mapped(key.addr.ip, ops->local_ip4);
	} else {
		key.addr.ip[0] = ops->local_ip6[0];
		key.addr.ip[1] = ops->local_ip6[1];
		key.addr.ip[2] = ops->local_ip6[2];
		key.addr.ip[3] = ops->local_ip6[3];
	}
	key.addr.port = (__u16)ops->local_port;
	key.addr.family = orig->family;
	if (bpf_map_update_elem(&zm_orig_dst, &key, orig, BPF_ANY) == 0)
		bpf_sock_ops_cb_flags_set(ops, BPF_SOCK_OPS_STATE_CB_FLAG);
}

static __always_inline void forget_tuple(struct bpf_sock_ops *ops)
{
	struct bpf_sock *sk = ops->sk;
	if (!sk)
		return;
	struct zm_addr *orig = bpf_sk_storage_get(&zm_sk_orig, sk, 0, 0);
	if (!orig)
		return;
	struct zm_tuple key = {};
	key.netns = bpf_get_netns_cookie(ops);
	if (orig->family == AF_INET) {
		set_v4mapped(key.addr.ip, ops->local_ip4);
	} else {
		key.addr.ip[0] = ops->local_ip6[0];
		key.addr.ip[1] = ops->local_ip6[1];
		key.addr.ip[2] = ops->local_ip6[2];
		key.addr.ip[3] = ops->local_ip6[3];
	}
	key.addr.port = (__u16)ops->local_port;
	key.addr.family = orig->family;
	bpf_map_delete_elem(&zm_orig_dst, &key);
}

SEC("sockops")
int zm_sockops(struct bpf_sock_ops *ops)
{
	switch (ops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		remember_tuple(ops);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (ops->args[1] == BPF_TCP_CLOSE)
			forget_tuple(ops);
		break;
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
	if (sk->family == AF_INET) {
		set_v4mapped(key.addr.ip, sk->dst_ip4);
	} else {
		key.addr.ip[0] = sk->dst_ip6[0];
		key.addr.ip[1] = sk->dst_ip6[1];
		key.addr.ip[2] = sk->dst_ip6[2];
		key.addr.ip[3] = sk->dst_ip6[3];
	}
	key.addr.port = bpf_ntohs((__u16)sk->dst_port);
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

// Inbound steering. Connections from outside arrive on the pod's interface; the proxy's own
// connections to the app arrive over loopback and are left alone, as is the HBONE port, whose
// listener the normal lookup finds.
SEC("sk_lookup")
int zm_sk_lookup(struct bpf_sk_lookup *ctx)
{
	if (ctx->protocol != IPPROTO_TCP || ctx->ingress_ifindex == LOOPBACK_IFINDEX)
		return SK_PASS;
	if (ctx->local_port == zm_hbone_port)
		return SK_PASS;
	struct zm_addr key = {};
	if (ctx->family == AF_INET) {
		set_v4mapped(key.ip, ctx->local_ip4);
		key.family = AF_INET;
	} else {
		key.ip[0] = ctx->local_ip6[0];
		key.ip[1] = ctx->local_ip6[1];
		key.ip[2] = ctx->local_ip6[2];
		key.ip[3] = ctx->local_ip6[3];
		key.family = AF_INET6;
	}
	struct bpf_sock *listener = bpf_map_lookup_elem(&zm_inbound, &key);
	if (!listener)
		return SK_PASS; // not a captured pod address
	long err = bpf_sk_assign(ctx, listener, 0);
	bpf_sk_release(listener);
	// A captured address whose listener cannot take the connection (closed, wrong family):
	// refuse rather than deliver it to the app around the proxy.
	return err == 0 ? SK_PASS : SK_DROP;
}

char _license[] SEC("license") = "Dual BSD/GPL";
