#!/usr/bin/env python3
"""Chat with a qwen35 model in the terminal (Python bindings example).

    python3 examples/chat.py MODEL.gguf                     # interactive, streaming
    python3 examples/chat.py MODEL.gguf -p "Hello!"         # one question, then exit
    python3 examples/chat.py MODEL.gguf --mmproj mmproj.gguf --image cat.png -p "What is this?"

Reasoning (thinking mode) is shown dimmed; --no-think turns it off. In the
interactive mode, Ctrl-C stops the current reply and Ctrl-D quits.
Run from a build tree with
    PYTHONPATH=build/bindings/python:bindings/python python3 examples/chat.py ...
or after `pip install .`.
"""

import argparse
import os
import sys

import qwen35

DIM, RESET = ("\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "")


def image_part(path):
    return {"type": "image_url", "image_url": {"url": "file://" + os.path.abspath(path)}}


def reply(llm, messages, args):
    """Stream one assistant reply; returns the message to keep in the history."""
    content, reasoning, in_reasoning = "", "", False
    stream = llm.create_chat_completion(
        messages, stream=True, max_tokens=args.n_predict, temperature=args.temp, top_p=args.top_p,
        top_k=args.top_k, min_p=0.0, presence_penalty=args.presence_penalty, seed=args.seed,
        enable_thinking=not args.no_think)
    try:
        for chunk in stream:
            delta = chunk["choices"][0]["delta"]
            if delta.get("reasoning_content"):
                if not in_reasoning:
                    print(DIM, end="")
                    in_reasoning = True
                reasoning += delta["reasoning_content"]
                print(delta["reasoning_content"], end="", flush=True)
            if delta.get("content"):
                if in_reasoning:
                    print(RESET + "\n", end="")
                    in_reasoning = False
                content += delta["content"]
                print(delta["content"], end="", flush=True)
            if chunk["choices"][0]["finish_reason"] and args.timings:
                u = chunk.get("usage", {})
                print(f"\n[{u.get('prompt_tokens')} prompt + {u.get('completion_tokens')} generated tokens, "
                      f"finish: {chunk['choices'][0]['finish_reason']}]", file=sys.stderr, end="")
    except KeyboardInterrupt:
        stream.close()   # stops the generation
        print(" [interrupted]", end="")
    if in_reasoning:
        print(RESET, end="")
    print()
    return {"role": "assistant", "content": content, "reasoning_content": reasoning or None}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="qwen35 GGUF model")
    ap.add_argument("-p", "--prompt", help="ask this one question and exit")
    ap.add_argument("-s", "--system", help="system prompt")
    ap.add_argument("--mmproj", help="vision projector GGUF (for --image)")
    ap.add_argument("--image", action="append", default=[], help="attach an image to the first question")
    ap.add_argument("-c", "--ctx-size", type=int, default=8192)
    ap.add_argument("-n", "--n-predict", type=int, default=-1, help="max tokens per reply (-1: no limit)")
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--temp", type=float, default=None, help="default: 1.0 thinking, 0.7 otherwise")
    ap.add_argument("--top-p", type=float, default=None, help="default: 0.95 thinking, 0.8 otherwise")
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--presence-penalty", type=float, default=1.5)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--no-think", action="store_true", help="answer without reasoning first")
    ap.add_argument("--no-mtp", action="store_true", help="disable MTP speculative decoding")
    ap.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is present")
    ap.add_argument("--timings", action="store_true", help="print token counts after each reply")
    args = ap.parse_args()
    # Qwen3.5 recommended sampling for the chosen mode.
    if args.temp is None:
        args.temp = 0.7 if args.no_think else 1.0
    if args.top_p is None:
        args.top_p = 0.8 if args.no_think else 0.95
    if args.image and not args.mmproj:
        ap.error("--image needs --mmproj")

    try:
        llm = qwen35.Llama(args.model, n_ctx=args.ctx_size, n_threads=args.threads, mmproj_path=args.mmproj,
                           n_gpu_layers=0 if args.cpu else -1, use_mtp=not args.no_mtp, verbose=False)
    except qwen35.Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    messages = [{"role": "system", "content": args.system}] if args.system else []
    images = [image_part(p) for p in args.image]
    with llm:
        while True:
            if args.prompt is not None:
                question = args.prompt
            else:
                try:
                    question = input("> ")
                except (EOFError, KeyboardInterrupt):
                    print()
                    return 0
                if not question.strip():
                    continue
            content = [{"type": "text", "text": question}] + images if images else question
            images = []
            messages.append({"role": "user", "content": content})
            try:
                messages.append(reply(llm, messages, args))
            except (ValueError, qwen35.Error) as e:
                print(f"error: {e}", file=sys.stderr)
                messages.pop()
                if args.prompt is not None:
                    return 1
            if args.prompt is not None:
                return 0


if __name__ == "__main__":
    sys.exit(main())
