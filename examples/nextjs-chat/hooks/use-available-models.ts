"use client";
// The model picker's list: what the user's connected providers offer, grouped by provider.
import useSWR from "swr";
import type { AvailableModel } from "@/app/api/byorouter/models/route";

async function fetchModels(url: string): Promise<AvailableModel[]> {
  const response = await fetch(url);
  const body = (await response.json()) as { models?: AvailableModel[]; error?: string };
  if (!response.ok) throw new Error(body.error ?? `Could not load the models (${response.status}).`);
  return body.models ?? [];
}

export function useAvailableModels(connected: boolean) {
  const { data, error, isLoading } = useSWR(
    connected ? "/api/byorouter/models" : null,
    fetchModels,
    { revalidateOnFocus: false },
  );
  const models = data ?? [];
  const byProvider = new Map<string, AvailableModel[]>();
  for (const model of models) {
    byProvider.set(model.provider, [...(byProvider.get(model.provider) ?? []), model]);
  }
  return { models, byProvider, error: error as Error | undefined, isLoading };
}
