/*
 * The reboot lock as implemented: several requests per node (Zincati retries, two
 * replicas), any of which may rewrite, promote or withdraw the node's claim, each write
 * a compare-and-swap on one node's (state, version); a cleaner removes claims.
 * Extends shared/model/lock.pml (one process per node) to the implementation's
 * behaviour, and checks the safety property directly on the nodes: never more than
 * SLOTS nodes in state HELD.
 *
 *   spin -DN=2 -DSLOTS=1 -DR=2 -a lock-requests.pml && gcc -O2 -DSAFETY -w -o pan pan.c && ./pan -m50000000 -w26
 *
 * Seen on a 2-core machine (2026-11-21): N=2, R=2, SLOTS=1: 1,860,663 states, full
 * search, no assertion violated, 6 s. With the "wait" branch removed (a later claimant
 * no longer stops a promotion, the naive scheme) spin finds a double grant. N=3 with
 * R=2 did not finish within 3 minutes.
 */
#ifndef N
#define N 3
#endif
#ifndef SLOTS
#define SLOTS 1
#endif
#ifndef R
#define R 2            /* requests per node */
#endif

#define NONE 0
#define CLAIM 1
#define HELD 2

byte state[N];
byte owner[N];         /* the request whose write the node shows: stands for its resourceVersion */

inline holders_ok() {
  byte k = 0, c = 0;
  do
  :: k < N -> if :: state[k] == HELD -> c++ :: else -> skip fi; k++
  :: else -> break
  od;
  assert(c <= SLOTS)
}

proctype request(byte i) {
  byte j, h, l, g;
start:
  /* claim: (re)write the node's claim unless it holds; the read and the conditioned
     write are folded into one step, which only removes interleavings that end in a
     409 and a retry */
  atomic {
    if
    :: state[i] == HELD -> goto held
    :: else -> state[i] = CLAIM; owner[i] = _pid
    fi
  };
check:
  atomic {
    h = 0; l = 0; g = 0; j = 0;
    do
    :: j < N ->
       if
       :: j != i && state[j] == HELD -> h++
       :: j != i && state[j] == CLAIM && j < i -> l++
       :: j != i && state[j] == CLAIM && j > i -> g++
       :: else -> skip
       fi;
       j++
    :: else -> break
    od
  };
  if
  :: h + l >= SLOTS ->          /* withdraw, conditioned on our claim's version */
     atomic { if :: owner[i] == _pid && state[i] == CLAIM -> state[i] = NONE; owner[i] = 0 :: else -> skip fi }; goto start
  :: h + l < SLOTS && h + l + g >= SLOTS -> goto check
  :: h + l + g < SLOTS ->       /* promote, conditioned on our claim's version */
     atomic { if :: owner[i] == _pid && state[i] == CLAIM -> state[i] = HELD; holders_ok() :: else -> goto start fi }
  fi;
held:
  /* told to reboot (re-entrant for every request of the node); then steady-state */
  atomic { if :: state[i] == HELD -> state[i] = NONE; owner[i] = 0 :: else -> skip fi };
  goto start
}

proctype cleaner() {
  byte k;
  do
  :: k = 0;
     do
     :: k < N -> if :: atomic { state[k] == CLAIM -> state[k] = NONE; owner[k] = 0 } :: skip fi; k++
     :: else -> break
     od
  od
}

init {
  byte i = 0, r;
  atomic {
    do
    :: i < N -> r = 0; do :: r < R -> run request(i); r++ :: else -> break od; i++
    :: else -> break
    od;
    run cleaner()
  }
}
