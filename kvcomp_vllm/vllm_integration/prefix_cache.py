"""Compression beside vLLM's prefix cache: which prompt blocks a request keeps raw (its protected prefix).

The rule: a block that is, or may become, a prefix-cache entry is never rewritten by compaction, and a
block that compaction rewrites is never entered in the cache. A request's protected prefix is decided
once, when the scheduler first allocates for it (`PrefixProtection.admit`): the tokens that hit the cache,
or more with `cache_prefix: N` (the first N tokens, whole blocks), never the last block's worth. Those
blocks stay raw in every layer; the policy compresses the rest (`policies.protected`). A request that
compresses enters only its protected blocks in the cache; one that evicts nothing (policy `full`, a prompt
within its budget) enters all, as vLLM does. A request resumed after preemption hits at most its protected
prefix, so it replays exactly what it did before. The protected prefix's end is pinned as vLLM's
shared-prefix junction, so that on hybrid models the sliding-window layers keep the blocks a later hit
there needs. The worker derives the same prefix from the hit it is told of (`protected_prefix`), and keeps
it across preemption.
"""

from __future__ import annotations

from collections import OrderedDict

from ..policies import KVPolicy
from ..policies.protected import protected_policy
from .compat import KVCacheManager, patch, pinned_hit
from .settings import fixed_protected, request_policy, set_protected

SEEN_BLOCKS = 1 << 17  # prompt block hashes remembered for `auto` (about 17 MB; 2M tokens at block size 16)


def protected_prefix(policy: KVPolicy, prompt_len: int, hit: int, block_size: int, seen: int = 0) -> int:
    """Prompt tokens kept raw for a request whose first `hit` tokens hit the prefix cache at admission and
    whose first `seen` tokens an earlier prompt began with: `cache_prefix` N keeps the first N (whole
    blocks), `auto` what was seen; the hit always, the last block's worth never."""
    n = policy.config.cache_prefix
    wanted = seen if n == "auto" else n // block_size * block_size
    return min(max(hit, wanted), (prompt_len - 1) // block_size * block_size)


class SeenPrefixes:
    """Block hashes of recent prompts (the newest `SEEN_BLOCKS`) with the prompts that held them, so `auto`
    can tell a prefix that an earlier, different prompt also began with: its second sender keeps it raw and
    cacheable, and the senders after it hit it. An identical prompt (a sibling of an n > 1 request, a
    retry) is not another sender: every copy is served alike."""

    def __init__(self, limit: int = SEEN_BLOCKS):
        self.limit = limit
        self.owners: OrderedDict = OrderedDict()  # block hash -> the last two prompts holding it

    def prefix_blocks(self, block_hashes, prompt) -> int:
        """Leading blocks that another prompt than `prompt` held (a block's hash covers every token before it)."""
        n = 0
        while n < len(block_hashes) and any(p != prompt for p in self.owners.get(block_hashes[n], ())):
            n += 1
        return n

    def add(self, block_hashes, prompt) -> None:
        for h in block_hashes:
            owners = self.owners.pop(h, ())
            self.owners[h] = owners if prompt in owners else (*owners, prompt)[-2:]
        while len(self.owners) > self.limit:
            self.owners.popitem(last=False)


def _prompt_identity(request, hash_block_size: int) -> tuple:
    """What tells two prompts apart: the hash of the last whole block (it covers those before) and the tokens after."""
    full = request.num_prompt_tokens // hash_block_size
    return (request.block_hashes[full - 1] if full else None, tuple(request.prompt_token_ids[full * hash_block_size:]))


def evicts(policy, prompt_len: int) -> bool:
    """Whether any layer of `policy` (protected or not) evicts prompt tokens once the prompt is read."""
    return any(policy.layout.evicted_after(layers[0], prompt_len, prompt_len) for layers in policy.layout.tier_layers().values())


class PrefixProtection:
    """The scheduler's protected prefixes, shared by the KV cache manager and every group's manager."""

    def __init__(self, policy: KVPolicy, block_size: int, requests: dict, hash_block_size: int | None = None):
        self.policy = policy  # the server's
        self.block_size = block_size
        self.hash_block_size = hash_block_size or block_size  # tokens per entry of `request.block_hashes`
        self.requests = requests  # the scheduler's, for each request's settings
        self.fixed: dict[str, int] = {}  # request id -> protected tokens, from its first allocation to its end
        self.pending: dict[str, int] = {}  # the allocation being tried (it may find no room)
        self.compressing: set[str] = set()  # fixed requests that evict prompt tokens: they cache only the prefix
        self.seen = SeenPrefixes()

    def protected(self, request_id: str) -> int:
        return self.fixed.get(request_id, self.pending.get(request_id, 0))

    def policy_of(self, request_id: str, base: KVPolicy | None = None):
        """The request's policy (`base`, or resolved from its settings), after its protected prefix."""
        if base is None:
            request = self.requests.get(request_id)
            base = self.policy if request is None else request_policy(self.policy, request.sampling_params)
        return protected_policy(base, self.protected(request_id))

    def chunk_policy(self, request, start: int):
        """The policy whose compression points a prompt chunk from `start` stops at: the request's, or for
        one not yet allocated for, the one its admission with `start` tokens hit will fix."""
        if request.request_id in self.fixed or request.request_id in self.pending:
            return self.policy_of(request.request_id)
        return protected_policy(request_policy(self.policy, request.sampling_params), self.expected(request, start))

    def expected(self, request, hit: int) -> int:
        """The protected prefix of a request whose lookup found `hit` tokens: its fixed one, or the one its
        admission with that hit will fix."""
        if request.request_id in self.fixed:
            return self.fixed[request.request_id]
        base = request_policy(self.policy, request.sampling_params)
        seen = self.seen.prefix_blocks(self._prompt_hashes(request), _prompt_identity(request, self.hash_block_size))
        seen = seen * self.hash_block_size // self.block_size * self.block_size
        return protected_prefix(base, request.num_prompt_tokens, hit, self.block_size, seen)

    def _prompt_hashes(self, request) -> list:
        return request.block_hashes[: request.num_prompt_tokens // self.hash_block_size]

    def admit(self, request, hit: int) -> bool:
        """Try the request's protected prefix for an allocation; False where it was fixed earlier."""
        if request.request_id in self.fixed:
            return False
        self.pending[request.request_id] = self.expected(request, hit)
        return True

    def settle(self, request_id: str, allocated: bool) -> None:
        """Fix the tried prefix where the allocation succeeded; forget it where it found no room."""
        if request_id not in self.pending:
            return
        if allocated:
            request = self.requests.get(request_id)
            if request is not None:
                if evicts(self.policy_of(request_id), request.num_prompt_tokens):
                    self.compressing.add(request_id)
                set_protected(request.sampling_params, self.pending[request_id])  # what its workers keep raw
                self.seen.add(self._prompt_hashes(request), _prompt_identity(request, self.hash_block_size))
            self.fixed[request_id] = self.pending[request_id]
        del self.pending[request_id]

    def cacheable_tokens(self, request, num_tokens: int) -> int:
        """Tokens of `request` that may be entered in the prefix cache: all where it evicts nothing."""
        request_id = request.request_id
        if request_id in self.pending:  # its first allocation, under way
            compressing = evicts(self.policy_of(request_id), request.num_prompt_tokens)
        else:
            compressing = request_id in self.compressing
        return min(num_tokens, self.protected(request_id)) if compressing else num_tokens

    def forget(self, request_id: str) -> None:
        """A finished request's prefix (a preempted one keeps it)."""
        self.fixed.pop(request_id, None)
        self.pending.pop(request_id, None)
        self.compressing.discard(request_id)


def _get_computed_blocks(original):
    def get_computed_blocks(self, request):
        result = original(self, request)
        protection = getattr(self, "kvcomp_protection", None)
        if protection is None:
            return result
        return pinned_hit(self, request, result, protection.expected(request, result[1]))

    return get_computed_blocks


def _allocate_slots(original):
    def allocate_slots(self, request, num_new_tokens, num_new_computed_tokens=0, *args, **kwargs):
        protection = getattr(self, "kvcomp_protection", None)
        trying = protection is not None and protection.admit(request, num_new_computed_tokens)
        try:
            blocks = original(self, request, num_new_tokens, num_new_computed_tokens, *args, **kwargs)
        except BaseException:
            if trying:
                protection.settle(request.request_id, False)
            raise
        if trying:
            protection.settle(request.request_id, blocks is not None)
        return blocks

    return allocate_slots


def install_prefix_cache_hooks() -> None:
    """Fix each request's protected prefix at its first allocation and cap a resumed one's hits (idempotent)."""
    patch(KVCacheManager, "get_computed_blocks", _get_computed_blocks)
    patch(KVCacheManager, "allocate_slots", _allocate_slots)
