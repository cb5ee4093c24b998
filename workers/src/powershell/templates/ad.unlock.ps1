$user = Get-StewardAdUser -Identity ([string]$p.identity)
$StewardPrior = [ordered]@{ locked_out = [bool]$user.LockedOut }
if (-not [bool]$user.LockedOut) {
    return (Out-StewardResult -Status 'unchanged' -Result (ConvertTo-StewardAdUser $user) -Prior $StewardPrior)
}
Unlock-ADAccount @StewardAd -Identity ([string]$user.DistinguishedName) -Confirm:$false
$after = Get-StewardAdUser -Identity ([string]$user.DistinguishedName)
return (Out-StewardResult -Status 'changed' -Result (ConvertTo-StewardAdUser $after) -Prior $StewardPrior)
