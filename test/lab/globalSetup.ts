/**
 * Starts the lab services once per test run (integration project only) and stops them by PID at the end.
 * Each fixture waits with a deadline and prints its logs when it fails. Tests read connection facts with
 * `inject("<name>")` (see ProvidedContext below).
 */
import type { TestProject } from "vitest/node";
import { startSshdLab } from "./sshdLab.ts";
import { startLibvirtLab } from "./libvirtLab.ts";
import { ensureGuestImage } from "./guestImage.ts";
import { startCephLab } from "./cephLab.ts";

type Stop = () => Promise<void>;

export default async function setup(project: TestProject): Promise<Stop> {
  const stops: Stop[] = [];
  const teardown = async () => {
    for (const stop of stops.reverse()) {
      try {
        await stop();
      } catch (e) {
        console.error("lab teardown:", e);
      }
    }
  };
  // Ceph's daemons boot by themselves while the other labs start; awaited (and stopped on any failure) below.
  const ceph = startCephLab();
  ceph.catch(() => {});
  // The real guest's image: cached per machine; built (about 2 min) while the other labs start when missing.
  const guest = ensureGuestImage();
  guest.catch(() => {});
  try {
    // Fixtures register here, e.g.:
    //   const libvirt = await startLibvirtLab(); stops.push(libvirt.stop); project.provide("libvirt", libvirt.info);
    void project;
    const sshd = await startSshdLab();
    stops.push(sshd.stop);
    project.provide("sshd", sshd.info);
    const libvirt = await startLibvirtLab();
    stops.push(libvirt.stop);
    project.provide("libvirt", libvirt.info);
    const cephLab = await ceph;
    stops.push(cephLab.stop);
    project.provide("ceph", cephLab.info);
    console.log(`ceph lab: RADOS gateway on ${cephLab.info.endpoint}, ready ${(cephLab.info.startMs / 1000).toFixed(1)} s after its start`);
    // A guest that cannot be built (no mirror?) fails the tests that boot it, with the build log, not all of them.
    const guestImage = await guest.catch((e: Error) => ({ error: e.message }));
    project.provide("guest", guestImage);
    if ("error" in guestImage) console.error(guestImage.error);
    else console.log(`guest image: Debian 12, kernel ${guestImage.kernelVersion}, ${guestImage.builtSeconds ? `built in ${guestImage.builtSeconds} s` : "cached"} (${guestImage.dir})`);
  } catch (e) {
    await ceph.then((c) => c.stop(), () => {});
    await teardown();
    throw e;
  }
  return teardown;
}
