/**
 * One subscriber connection shared by every `waitForResult` of a client.
 *
 * A connection per wait cost a TCP connect and ioredis's ready check before
 * the wait could read its job, and a server connection per concurrent wait.
 * Here a channel is subscribed when its first waiter arrives and unsubscribed
 * when its last one leaves; each message goes to the waiters of its channel.
 *
 * Pub/sub delivers at most once: a message published while the connection is
 * down is lost. After a reconnect the channels are subscribed again and, once
 * Redis confirmed that, every waiter is woken to read its job again, so a
 * transition whose message was lost is found in the record instead.
 */
import type { Redis } from "ioredis";

import { RRQError } from "./errors.js";

/** Someone waiting for messages on a channel. */
export interface ChannelWaiter {
  /** A message arrived, or the connection came back and one may have been lost. */
  wake(): void;
  /** No message can come any more: the connection was closed. */
  fail(error: Error): void;
}

/** One waiter's share of a channel's subscription. */
export interface ChannelSubscription {
  /** Settles once Redis confirmed the channel's subscription. */
  readonly ready: Promise<void>;
  /** Leaves the channel; the last waiter to leave unsubscribes it. Idempotent. */
  release(): void;
}

interface Channel {
  readonly waiters: Set<ChannelWaiter>;
  readonly subscribed: Promise<void>;
}

/** Channels of one lazily opened subscriber connection, counted by waiter. */
export class SharedSubscriber {
  readonly #connect: () => Redis;
  #redis: Redis | null = null;
  readonly #channels = new Map<string, Channel>();

  /**
   * `connect` makes the connection on the first subscribe: lazily connecting,
   * with `maxRetriesPerRequest: null`, as the counts here assume that a
   * (UN)SUBSCRIBE fails only when the connection ended, and with
   * `enableReadyCheck: false` (see Store.subscribeDone).
   */
  constructor(connect: () => Redis) {
    this.#connect = connect;
  }

  /** Adds `waiter` to `name`, subscribing the channel if it is its first waiter. */
  subscribe(name: string, waiter: ChannelWaiter): ChannelSubscription {
    const redis = this.#connection();
    const channel = this.#channels.get(name) ?? this.#open(redis, name);
    channel.waiters.add(waiter);
    let released = false;
    return {
      ready: channel.subscribed,
      release: () => {
        if (released) return;
        released = true;
        channel.waiters.delete(waiter);
        // A channel no longer in the map (closed, or its SUBSCRIBE failed) is
        // not this one's to unsubscribe: the name may be subscribed anew.
        if (channel.waiters.size > 0 || this.#channels.get(name) !== channel) return;
        this.#channels.delete(name);
        // Rejected only when the connection ended, which took the subscription with it.
        redis.unsubscribe(name).catch(() => undefined);
      },
    };
  }

  /** Closes the connection; waiters still waiting fail with an RRQError. */
  close(): void {
    const redis = this.#redis;
    if (redis === null) return;
    this.#end(redis, new RRQError("the client was closed while waiting for a job"));
    redis.disconnect();
  }

  #open(redis: Redis, name: string): Channel {
    const subscribed = redis.subscribe(name).then(() => undefined);
    const channel: Channel = { waiters: new Set(), subscribed };
    subscribed.catch(() => {
      // Its waiters get the error from `ready`; later ones subscribe anew
      // rather than share the failure.
      if (this.#channels.get(name) === channel) this.#channels.delete(name);
    });
    this.#channels.set(name, channel);
    return channel;
  }

  #connection(): Redis {
    if (this.#redis !== null) return this.#redis;
    const redis = this.#connect();
    let dropped = false;
    redis.on("message", (name: string) => this.#wake([name]));
    redis.on("close", () => {
      dropped = true;
    });
    redis.on("ready", () => {
      if (!dropped) return;
      dropped = false;
      this.#resubscribe(redis);
    });
    redis.on("end", () => this.#end(redis, new RRQError("the connection waiting for job results ended")));
    this.#redis = redis;
    return redis;
  }

  /**
   * After a reconnect: subscribes every channel again and then wakes its
   * waiters. ioredis resubscribes on its own too, but nothing tells when
   * Redis confirmed that; this SUBSCRIBE's reply does, and a waiter must not
   * read its job before, or a transition between the read and the
   * subscription would be lost as well.
   */
  #resubscribe(redis: Redis): void {
    const names = [...this.#channels.keys()];
    if (names.length === 0) return;
    redis.subscribe(...names).then(
      () => this.#wake(names),
      // The connection dropped again (its next "ready" comes back here) or
      // ended (which failed the waiters).
      () => undefined,
    );
  }

  #wake(names: readonly string[]): void {
    for (const name of names) {
      for (const waiter of this.#channels.get(name)?.waiters ?? []) waiter.wake();
    }
  }

  #end(redis: Redis, error: Error): void {
    if (this.#redis !== redis) return;
    this.#redis = null;
    const channels = [...this.#channels.values()];
    this.#channels.clear();
    for (const channel of channels) {
      for (const waiter of channel.waiters) waiter.fail(error);
    }
  }
}
