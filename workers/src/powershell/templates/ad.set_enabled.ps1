$user = Get-StewardAdUser -Identity ([string]$p.identity)
$want = [bool]$p.enabled
$StewardPrior = [ordered]@{ enabled = [bool]$user.Enabled }
if ([bool]$user.Enabled -eq $want) {
    return (Out-StewardResult -Status 'unchanged' -Result (ConvertTo-StewardAdUser $user) -Prior $StewardPrior)
}
if ($want) {
    Enable-ADAccount @StewardAd -Identity ([string]$user.DistinguishedName) -Confirm:$false
} else {
    Disable-ADAccount @StewardAd -Identity ([string]$user.DistinguishedName) -Confirm:$false
}
$after = Get-StewardAdUser -Identity ([string]$user.DistinguishedName)
return (Out-StewardResult -Status 'changed' -Result (ConvertTo-StewardAdUser $after) -Prior $StewardPrior)
